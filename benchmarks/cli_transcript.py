"""Before/after transcript of everyday CLI use: each command run by an older graphopt and by this one.

    git archive <old-commit> | tar -x -C /tmp/before
    ln -s /tmp/before/passes /tmp/before/graphopt/passes; ln -s /tmp/before/plugins /tmp/before/graphopt/plugins
    python3 benchmarks/cli_transcript.py --before /tmp/before --bert bert.onnx > benchmarks/results/cli-....md

``--bert`` is a BERT export with symbolic ``batch`` and ``seq`` dims (``samples.zoo.export("hf_bert",
dynamic=True)``). Each row shows the exit status, the seconds and the first lines of stdout/stderr.
"""
from __future__ import annotations

import argparse
import os
import pty
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


def _save(m, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def models(d: Path) -> dict[str, Path]:
    f = TensorProto.FLOAT
    out = {}
    x, y = helper.make_tensor_value_info("x", f, [2, 3]), helper.make_tensor_value_info("y", f, [2, 3])
    for name, op, opset in (("relu", "Relu", 17), ("abs", "Abs", 17), ("old", "Relu", 9)):
        g = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n0")], "g", [x], [y])
        out[name] = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=4),
                          d / f"{name}.onnx")
    unused = helper.make_tensor("unused", f, [4], np.ones(4, np.float32))
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="n0")], "g", [x], [y], initializer=[unused])
    out["unused_init"] = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                               d / "unused_init.onnx")
    rng = np.random.default_rng(0)
    for opset in (9, 17):
        w = helper.make_tensor("w", f, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
        xi = helper.make_tensor_value_info("x", f, ["n", 3, 8, 8])
        yo = helper.make_tensor_value_info("y", f, ["n", 4, 6, 6])
        g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                               helper.make_node("Relu", ["c"], ["y"], name="relu")], "g", [xi], [yo], initializer=[w])
        out[f"conv{opset}"] = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                                                      ir_version=4), d / f"conv{opset}.onnx")
    # many distinct custom ops: `inspect` prints well past a pipe's buffer
    nodes = [helper.make_node(f"Op{i:04d}", ["x"], [f"t{i}"], name=f"n{i}", domain="com.example") for i in range(3000)]
    outs = [helper.make_tensor_value_info(f"t{i}", f, [2, 3]) for i in range(3000)]
    g = helper.make_graph(nodes, "wide", [x], outs)
    out["wide"] = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid("com.example", 1)], ir_version=8),
                        d / "wide.onnx")
    np.savez(d / "cal8.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    np.savez(d / "cal5.npz", x=rng.standard_normal((5, 3, 8, 8)).astype(np.float32))
    np.savez(d / "wrong_name.npz", z=np.zeros((2, 3), np.float32))
    return out


def run(cmd: str, cwd: Path, pythonpath: str | None, tty: bool = False) -> tuple[int, float, str]:
    env = dict(os.environ, GRAPHOPT_NO_PLUGINS="1", COLUMNS="120")
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = cmd.replace("graphopt ", f"{sys.executable} -m graphopt ")
    t0 = time.perf_counter()
    if tty:  # a terminal: what a user sees of progress
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(cwd)
            os.execvpe("bash", ["bash", "-c", cmd], env)
        chunks = []
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(pid, 0)
        text = b"".join(chunks).decode(errors="replace")
        return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, text
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)


def summarize(text: str, lines: int, tty: bool) -> str:
    if tty:
        import re

        frames = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", f).strip() for f in text.split("\r")]
        frames = [f for f in frames if f]
        shown = frames[:1] + frames[-2:-1] if len(frames) > 1 else frames
        return " ⏎ ".join(shown)[:300] or "(nothing drawn)"
    out = [ln.rstrip() for ln in text.strip().splitlines()]
    longest = max((len(ln) for ln in out), default=0)
    body = out[:lines] + ([f"... ({len(out) - lines} more lines)"] if len(out) > lines else [])
    text = "<br>".join(ln[:160] + ("…" if len(ln) > 160 else "") for ln in body)
    return text + (f"<br>(longest line: {longest} characters)" if longest > 160 else "")


def cell(s: str) -> str:
    return "`" + s.replace("|", "\\|").replace("`", "'").replace("<br>", "`<br>`") + "`" if s else "(no output)"


ROWS = [  # item, command, test, lines shown, on a terminal
    ("1", "graphopt run bert.onnx --batch 2", "test_cli_everyday.py::test_run_and_bench_take_input_shapes", 4, False),
    ("1", "graphopt run bert.onnx --input-shape input_ids:2,16 --input-shape attention_mask:2,16",
     "test_cli_everyday.py::test_input_shapes_resolve_by_name_and_never_fill_other_dims", 4, False),
    ("1", "graphopt bench conv17.onnx --input-shape x:4,3,8,8 --repeat 3",
     "test_cli_everyday.py::test_run_and_bench_take_input_shapes", 4, False),
    ("2", "graphopt verify relu.onnx", "test_cli_everyday.py::test_verify_runs_the_optimized_file_in_onnxruntime", 5,
     False),
    ("2", "graphopt compare relu.onnx abs.onnx",
     "test_cli_everyday.py::test_compare_two_models_two_runners_and_saved_outputs", 5, False),
    ("2", "graphopt compare relu.onnx --runners onnxruntime,cuda-emu",
     "test_cli_everyday.py::test_compare_two_models_two_runners_and_saved_outputs", 5, False),
    ("2", "graphopt compare relu.onnx --save-outputs ref.npz && graphopt compare abs.onnx --load-outputs ref.npz",
     "test_cli_everyday.py::test_compare_two_models_two_runners_and_saved_outputs", 5, False),
    ("3", "graphopt compile bert.onnx --backend cuda-emu --input-shape input_ids:1,16 --emit emit && ls emit",
     "test_cli_everyday.py::test_compile_emit_writes_source_launch_plan_and_report", 6, False),
    ("3", "graphopt compile conv17.onnx --backend cuda-emu | tail -4",
     "test_cli_everyday.py::test_compile_emit_writes_source_launch_plan_and_report", 4, False),
    ("4", "graphopt quantize conv9.onnx --calibration cal8.npz --batch-size 4 -o q.onnx",
     "test_cli_everyday.py::test_quantize_raises_an_old_opset_and_says_so", 3, False),
    ("4", "graphopt quantize conv17.onnx --calibration cal5.npz -o q5.onnx",
     "test_cli_everyday.py::test_quantize_checks_the_calibration_batch_before_any_work", 3, False),
    ("5", "graphopt inspect wide.onnx | head -2",
     "test_cli_everyday.py::test_broken_pipe_old_opset_warning_and_wrong_verify_input", 4, False),
    ("5", "graphopt verify relu.onnx --inputs wrong_name.npz",
     "test_cli_everyday.py::test_broken_pipe_old_opset_warning_and_wrong_verify_input", 3, False),
    ("5", "rm -f out.onnx; graphopt optimize relu.onnx -o out.onnx --report nodir/r.json; echo exit=$?; ls out.onnx",
     "test_cli_everyday.py::test_a_failing_command_leaves_no_output", 4, False),
    ("5", "python3 -c \"import graphopt; g, r = graphopt.optimize('relu.onnx', level=7, return_report=True); "
          "print([x.name for x in r.records][:2])\" 2>&1 | tail -1",
     "test_cli_everyday.py::test_api_refuses_bad_levels_and_pass_lists", 3, False),
    ("5", "graphopt bench relu.onnx --repeat 0", "test_cli_everyday.py::test_argparse_errors_are_one_line_with_a_hint",
     4, False),
    ("5", "graphopt run relu.onnx --batch -1", "test_cli_everyday.py::test_argparse_errors_are_one_line_with_a_hint",
     4, False),
    ("5", "graphopt run relu.onnx --batchh 2", "test_cli_everyday.py::test_argparse_errors_are_one_line_with_a_hint",
     6, False),
    ("5", "graphopt inspect old.onnx 2>&1 >/dev/null",
     "test_cli_everyday.py::test_broken_pipe_old_opset_warning_and_wrong_verify_input", 4, False),
    ("5", "graphopt bench unused_init.onnx --repeat 2 2>&1 >/dev/null", "(onnxruntime's log level; not asserted)", 4,
     False),
    ("6", "graphopt passes | head -3", "test_cli_everyday.py::test_tables_are_plain_when_piped_and_json_is_unchanged",
     3, False),
    ("6", "graphopt run conv17.onnx --backend cuda-emu >/dev/null",
     "test_progress.py::test_steps_draw_only_when_shown_and_share_one_display (on a terminal)", 1, True),
    ("7", "graphopt cache info", "test_cli_cache.py::test_info_and_clear", 4, False),
    ("7", "grep -c 'issue 7\\|DESIGN.md' $ROOT/docs/architecture.md $ROOT/docs/cuda.md", "(docs)", 3, False),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="an older checkout (see the module docstring)")
    ap.add_argument("--bert", required=True, help="a BERT export with symbolic batch and seq dims")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = {"before": Path(tmp) / "before", "after": Path(tmp) / "after"}
        for side, d in root.items():
            d.mkdir()
            models(d)
            (d / "bert.onnx").write_bytes(Path(args.bert).read_bytes())
        env_path = {"before": str(Path(args.before).resolve()), "after": None}
        docs_root = {"before": str(Path(args.before).resolve()), "after": str(ROOT)}
        print("| item | command | before | after | test |")
        print("|---|---|---|---|---|")
        for item, cmd, test, lines, tty in ROWS:
            cells = []
            for side in ("before", "after"):
                c = cmd.replace("$ROOT", docs_root[side])
                rc, secs, text = run(c, root[side], env_path[side], tty=tty)
                cells.append(f"exit {rc}, {secs:.1f} s: " + cell(summarize(text, lines, tty)))
            print(f"| {item} | `{cmd.replace('|', chr(92) + '|')}` | {cells[0]} | {cells[1]} | {test} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
