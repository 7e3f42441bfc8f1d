"""One summary of a GPU session's output files (benchmarks/gpu_session.sh writes them).

    python3 benchmarks/gpu_report.py benchmarks/results/gpu-run --tag h100 --date 2026-12-07 --write summary.md

Reads ``cuda-<what>-<tag>-<date>.txt`` in the folder: the session's step lines, the smoke test's
PASS/FAIL lines, the benchmarks' ``row:`` JSON lines (one per measured figure, written as measured)
and the device tests' pytest summary, and prints a Markdown summary -- the GPU and versions, each
step's exit status and seconds, the smoke result, a table of graphopt vs each peer with the ratio
(graphopt / peer: below 1 means graphopt is faster), the tests' counts and failures -- that can be
committed under benchmarks/results/ as it is. A step that was stopped or never ran says so.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

STEP = re.compile(r"^step (\w+): exit (\d+) after (\d+)s \(cap (\d+)s\)")
SMOKE = re.compile(r"^smoke (\S+): (PASS|FAIL)\b(.*)$")
PYTEST_COUNTS = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")


@dataclass
class Session:
    header: str = ""
    versions: list[str] = field(default_factory=list)
    steps: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (exit, seconds, cap)
    smoke: list[tuple[str, str, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    tests: str = ""
    failures: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)


def read_session(folder: Path, tag: str, date: str) -> Session:
    s = Session()

    def lines(what: str) -> list[str]:
        path = folder / f"cuda-{what}-{tag}-{date}.txt"
        if not path.exists():
            return []
        text = path.read_text(errors="replace").splitlines()
        if any(line.startswith("# STOPPED") for line in text):
            s.stopped.append(what)
        return text

    for line in lines("session"):
        m = STEP.match(line)
        if m:
            s.steps[m.group(1)] = tuple(int(x) for x in m.group(2, 3, 4))
        elif not s.header and ", budget " in line:
            s.header = line.strip()
        elif line.startswith("python ") or line.startswith("name, driver") or re.match(r"^NVIDIA .*, \d", line):
            s.versions.append(line.strip())
    for line in lines("smoke"):
        m = SMOKE.match(line)
        if m:
            s.smoke.append((m.group(1), m.group(2), m.group(3).strip()))
        elif line.startswith("smoke: device "):
            s.versions.append(line.removeprefix("smoke: ").strip())
    for what in ("models", "gemm"):
        for line in lines(what):
            if line.startswith("row: "):
                try:
                    s.rows.append(json.loads(line[5:]))
                except ValueError:
                    continue
    for line in lines("tests"):
        m = PYTEST_COUNTS.match(line.strip())
        if m:
            s.tests = m.group(1)
        elif line.startswith(("FAILED ", "ERROR ")):
            s.failures.append(line.strip())
        elif line.startswith("{") and '"what"' in line:
            s.facts.append(line.strip())
    return s


def ratio_rows(rows: list[dict]) -> list[tuple[str, float, str, float, float, str]]:
    """(case, graphopt ms, peer, peer ms, graphopt/peer, note) per peer figure."""
    out = []
    for r in rows:
        if not r["peers"]:
            out.append((r["case"], r["ms"], "-", float("nan"), float("nan"), r["note"]))
        for peer, ms in r["peers"].items():
            out.append((r["case"], r["ms"], peer, ms, r["ms"] / ms if ms else float("nan"), r["note"]))
    return out


def markdown(s: Session, tag: str, date: str) -> str:
    out = [f"# graphopt on a GPU: {tag}, {date}", ""]
    if s.header:
        out += [f"Session: {s.header}", ""]
    out += [f"- {v}" for v in s.versions] + ([""] if s.versions else [])
    out += ["## Steps", "", "| step | exit | seconds | cap |", "|---|---|---|---|"]
    out += [f"| {k} | {e}{' (stopped)' if e in (124, 137) else ''} | {t} | {c} |" for k, (e, t, c) in s.steps.items()]
    if not s.steps:
        out.append("| (no step ran) | | | |")
    passed = sum(1 for _, r, _ in s.smoke if r == "PASS")
    out += ["", f"## Smoke test: {passed} of {len(s.smoke)} passed", ""]
    out += [f"- {case}: {res} {detail}" for case, res, detail in s.smoke]
    out += ["", "## Figures (ratio = graphopt ms / peer ms: below 1, graphopt is faster)", "",
            "| case | graphopt ms | peer | peer ms | ratio | notes |", "|---|---|---|---|---|---|"]
    for case, ms, peer, pms, ratio, note in ratio_rows(s.rows):
        out.append(f"| {case} | {ms:.3f} | {peer} | {pms:.3f} | {ratio:.2f} | {note} |")
    if not s.rows:
        out.append("| (nothing measured) | | | | | |")
    out += ["", f"## Device tests: {s.tests or 'no result'}", ""]
    out += [f"- {f}" for f in s.failures[:30]]
    if s.facts:
        out += ["", "What the device did:", ""] + [f"- `{f}`" for f in s.facts[:30]]
    if s.stopped:
        out += ["", f"Stopped by their timeout: {', '.join(s.stopped)}"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Summarize a GPU session's output files.")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--tag", required=True, help="the GPU tag in the file names (h100, h200)")
    ap.add_argument("--date", required=True, help="the date in the file names (YYYY-MM-DD)")
    ap.add_argument("--write", type=Path, help="also write the summary to this file")
    args = ap.parse_args(argv)
    text = markdown(read_session(args.folder, args.tag, args.date), args.tag, args.date)
    print(text, end="")
    if args.write:
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
