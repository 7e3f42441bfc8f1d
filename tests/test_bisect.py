"""graphopt bisect: the first pass (and rewrite) that changes a model's outputs, and the sub-graph
that shows it."""
import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.patterns import P, RewriteLimit, Rule, X, apply_rules
from graphopt.testing import assert_same_outputs


def _neg_chain(n):
    b = GraphBuilder()
    y = b.input("x", (3,))
    for _ in range(n):
        y = b.op("Neg", b.op("Neg", y))
    b.output(b.op("Relu", y), "y")
    return b.graph


def test_rewrite_limit_stops_rules_after_n_rewrites_and_names_each():
    rules = [Rule("neg_neg_to_x", P("Neg", P("Neg", X)), lambda g, m: m.replace_with(m["x"]) or True)]
    g = _neg_chain(3)
    before = g.clone()
    with RewriteLimit(2) as limit:
        modified, stats = apply_rules(g, rules)
    assert modified and stats.applied["neg_neg_to_x"] == 2 and len(limit.applied) == 2
    assert all(rule == "neg_neg_to_x" and node for rule, node in limit.applied)
    assert [n.op_type for n in g].count("Neg") == 2
    assert_same_outputs(before, g, feeds={"x": np.array([1.0, -2.0, 0.5], np.float32)})
    with RewriteLimit(None) as unlimited:  # no limit: every rewrite, still recorded
        apply_rules(g, rules)
    assert len(unlimited.applied) == 1 and [n.op_type for n in g] == ["Relu"]
    assert RewriteLimit.active is None


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from graphopt import passmanager  # noqa: E402
from graphopt.bisect import bisect  # noqa: E402
from graphopt.cli import main  # noqa: E402
from graphopt.onnx_io import load_onnx  # noqa: E402
from graphopt.plugins.cpu import run_reference  # noqa: E402

SAMPLE_PLUGIN = Path(__file__).parents[1] / "samples" / "custom_pass_plugin" / "graphopt_fold_double_neg" / "__init__.py"

WRONG_PLUGIN = '''
"""A third-party pass that is wrong on purpose: Sub(x, c) => Sub(c, x) for a constant c."""
from graphopt.passmanager import register_pass, rule_pass, PassResult
from graphopt.patterns import P, Rule, Var, X


def _swap(graph, m):
    a, b = m.root.inputs
    m.root.set_input(0, b)
    m.root.set_input(1, a)
    return True


rule_pass("plugin_reorder_sub", [Rule("sub_keeps_order", P("Sub", P("Relu", X), Var("c", const=True)),
                                      lambda g, m: False),
                                 Rule("sub_const_swap", P("Sub", X, Var("c", const=True)), _swap)],
          opt_level=2, order=35, doc="Sub(x, c) => Sub(c, x)  (wrong on purpose)")


@register_pass("plugin_scale_tanh", opt_level=2, order=36)
def scale_tanh(graph, ctx):
    "Tanh(x) => Tanh(x) * 1.0001 (a function pass, wrong by a little)"
    import numpy as np
    changed = False
    for n in list(graph):
        if n.op_type == "Tanh" and not n.meta.get("scaled"):
            n.meta["scaled"] = True
            y = n.output
            c = graph.add_initializer(graph.unique_name("k"), np.float32(1.01))
            m = graph.make_node("Mul", [y, c], after=n)
            y.replace_all_uses_with(m.output)
            m.set_input(0, y)
            changed = True
    return PassResult(changed)
'''


@pytest.fixture
def isolated_passes(monkeypatch):
    """Passes a test's plugin registers vanish with the test."""
    passmanager.all_passes()  # the built-ins first, or the copy would lack them for good
    monkeypatch.setattr(passmanager, "_PASSES", dict(passmanager._PASSES))


def _model(tmp_path, with_tanh=True):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Neg", ["a"], ["n1"], name="neg1"), helper.make_node("Neg", ["n1"], ["r"], name="neg2"),
             helper.make_node("Sub", ["r", "c"], ["s"], name="sub"),
             helper.make_node("Tanh" if with_tanh else "Sigmoid", ["s"], ["t"], name="act"),
             helper.make_node("Mul", ["t", "r"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          initializer=[numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
                                       numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
                                       numpy_helper.from_array(np.float32(0.7), "c")])
    p = tmp_path / "model.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), p)
    return p


def test_bisect_finds_a_planted_wrong_pass_of_a_plugin_and_its_rule(tmp_path, isolated_passes):
    plugin = tmp_path / "wrong_plugin.py"
    plugin.write_text(WRONG_PLUGIN)
    model = _model(tmp_path)
    res = bisect(model, plugins=[str(plugin)], out_dir=tmp_path / "culprit")
    assert res.pass_name == "plugin_reorder_sub" and res.source == str(plugin) and res.kind == "graph"
    assert res.rule == "sub_const_swap" and res.node == "sub" and res.rewrite_index == 1
    assert [h["pass"] for h in res.history if h["ok"]][:2] == ["fold_constants", "fold_shape_arithmetic"]
    assert res.history[-1] == {"pass": "plugin_reorder_sub", "iteration": 1, "ok": False}
    # the smallest sub-graph: the Sub alone, fed what it read in the full model
    folder = tmp_path / "culprit"
    small = onnx.load(folder / "model.onnx")
    assert [n.op_type for n in small.graph.node] == ["Sub"] and res.minimized_nodes == 1
    info = json.loads((folder / "case.json").read_text())
    assert info["pass"] == "plugin_reorder_sub" and info["rule"] == "sub_const_swap"
    z = np.load(folder / "inputs.npz")
    feeds = {k: z[k] for k in z.files}
    g = load_onnx(folder / "model.onnx")
    before = run_reference(g, feeds)[0]
    passmanager.get_pass("plugin_reorder_sub").fn(g, passmanager.PassContext())
    after = run_reference(g, feeds)[0]
    np.testing.assert_allclose(after, -before, rtol=1e-6)  # c - x instead of x - c


def test_bisect_names_a_wrong_function_pass_and_the_backend_when_no_pass_is_wrong(tmp_path, isolated_passes,
                                                                                  monkeypatch):
    plugin = tmp_path / "wrong_plugin.py"
    plugin.write_text(WRONG_PLUGIN)
    model = _model(tmp_path)
    res = bisect(model, plugins=[str(plugin)], disable=["plugin_reorder_sub"])
    assert res.pass_name == "plugin_scale_tanh" and res.rule is None and "differ" in res.message
    clean = bisect(_model(tmp_path, with_tanh=False), disable=["plugin_reorder_sub"])
    assert clean.pass_name is None and clean.applications >= 10
    # every pass is right, the CPU backend's fast path of the node making the output is not: the backend
    from graphopt.plugins.cpu import backend as cpu_backend

    real = cpu_backend.prepare

    def wrong_prepare(node, attrs, consts):
        prep = real(node, attrs, consts)
        if prep is not None and node.outputs[0].is_graph_output:
            fn = prep.fn
            prep = type(prep)(lambda *a: fn(*a) + 1, prep.inputs)
        return prep

    monkeypatch.setattr(cpu_backend, "prepare", wrong_prepare)
    blamed = bisect(_model(tmp_path, with_tanh=False), disable=["plugin_reorder_sub"])
    assert blamed.pass_name == "cpu" and blamed.kind == "backend" and "differ" in blamed.message


def test_a_correct_plugin_pass_is_replayed_and_not_blamed(tmp_path, isolated_passes):
    res = bisect(_model(tmp_path), plugins=[str(SAMPLE_PLUGIN)])
    assert res.pass_name is None
    assert "sample_fold_double_neg" in {h["pass"] for h in res.history}


def test_bisect_command_line(tmp_path, capsys, isolated_passes):
    plugin = tmp_path / "wrong_plugin.py"
    plugin.write_text(WRONG_PLUGIN)
    model = _model(tmp_path)
    out = tmp_path / "out"
    assert main(["bisect", str(model), "--plugin", str(plugin), "--out", str(out)]) == 3
    text = capsys.readouterr().out
    assert "pass 'plugin_reorder_sub'" in text and "rule 'sub_const_swap' on node 'sub'" in text
    assert (out / "model.onnx").is_file() and (out / "inputs.npz").is_file()
    assert main(["bisect", str(model), "--disable", "plugin_reorder_sub,plugin_scale_tanh", "--json",
                 "--out", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out)["pass_name"] is None and not (tmp_path / "none").exists()
