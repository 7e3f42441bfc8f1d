"""graphopt.expr: the scalar-expression IR, its text form, NumPy evaluation and the
mapping from ONNX elementwise ops (checked against the registry kernels op by op)."""
import math

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.expr import (BINARY_OPS, UNARY_OPS, Binary, Cast, Const, ExprError, Input, Select, Unary, dtype_of,
                           evaluate, evaluate_many, format_expr, format_exprs, inputs_used, node_to_expr,
                           nodes_in_order, onnx_to_expr, parse_expr, parse_exprs)
from graphopt.ops.registry import all_schemas
from graphopt.plugins.cpu.backend import run_reference

X, Y, Z = Input(0), Input(1), Input(2)


def test_nodes_are_immutable_and_compare_by_structure():
    a = Unary("relu", Binary("add", X, Const(1.0)))
    b = Unary("relu", Binary("add", Input(0), Const(1)))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Unary("relu", Binary("add", X, Const(1.0, "float64")))
    with pytest.raises(AttributeError):
        a.op = "neg"
    with pytest.raises(ExprError, match="unknown unary op"):
        Unary("frobnicate", X)


def test_const_values_are_normalized_to_their_dtype():
    assert Const(0.1).value == float(np.float32(0.1))
    assert Const(2.9, "int64").value == 2 and Const(1, "bool").value is True
    assert Const(float("nan")) == Const(float("nan"))


@pytest.mark.parametrize("text", [
    "relu(add(in0, 1.0))",
    "t0 = add(in0, in1); relu(t0), mul(t0, in2)",
    "cast<int64>(select(lt(in0, 0.0), in1, in0))",
    "add(in0, 3:int32), and(in1, true), min(in2, -inf), max(in2, nan), mul(in2, 1e-05)",
    "div(in0, 0.5:float64), add(in1, 1.5:float16)",
    "t0 = add(mul(in0, sigmoid(in0)), in1); t0, neg(t0)",
])
def test_text_form_round_trips(text):
    exprs = parse_exprs(text)
    assert format_exprs(exprs) == text
    assert parse_exprs(format_exprs(exprs)) == exprs


def test_shared_subexpressions_print_once_and_acc_names_input_zero():
    s = Unary("sigmoid", X)
    silu = Binary("mul", X, s)
    both = Binary("add", silu, silu)
    assert format_expr(both) == "t0 = mul(in0, sigmoid(in0)); add(t0, t0)"
    assert format_expr(Unary("relu", Binary("add", X, Y)), acc=True) == "relu(add(acc, in1))"
    assert parse_expr("relu(add(acc, in1))") == Unary("relu", Binary("add", X, Y))
    # a long chain with sharing at every step stays linear in size
    e = X
    for _ in range(200):
        e = Binary("mul", e, e)
    assert len(format_expr(e)) < 200 * 30 and parse_expr(format_expr(e)) == e


@pytest.mark.parametrize("bad, why", [
    ("relu(in0", "expected"), ("foo(in0)", "unknown name"), ("add(in0)", "expected ,"),
    ("relu(in0) extra", "unexpected"), ("in0 $ in1", "cannot read"), ("cast<nonsense>(in0)", "unknown dtype"),
])
def test_malformed_text_is_one_clear_error(bad, why):
    with pytest.raises(Exception, match=why):
        parse_exprs(bad)


def test_queries():
    e = Select(Binary("gt", X, Const(0.0)), Unary("exp", Z), X)
    assert inputs_used(e) == [0, 2]
    assert dtype_of(e, ["float32", None, "float32"]) == "float32"
    assert dtype_of(e.c, ["float32"]) == "bool"
    assert dtype_of(Cast(X, "int8"), ["float32"]) == "int8"
    order = nodes_in_order([e])
    assert order.index(X) < order.index(e.c) < order.index(e) and len(order) == len(set(order)) == 6


def test_evaluation_broadcasts_and_follows_onnx_dtype_rules():
    a = np.array([[-7, 7]], np.int64)
    b = np.array([[2], [-2]], np.int64)
    q = evaluate(Binary("div", X, Y), [a, b])
    np.testing.assert_array_equal(q, [[-3, 3], [3, -3]])  # truncates toward zero, as ONNX
    assert q.dtype == np.int64 and q.shape == (2, 2)
    lt = evaluate(Binary("lt", X, Const(0.0)), [np.array([-1.0, 1.0], np.float32)])
    assert lt.dtype == bool and lt.tolist() == [True, False]
    h = evaluate(Binary("add", X, Const(1.0, "float16")), [np.ones(3, np.float16)])
    assert h.dtype == np.float16
    s = evaluate(Unary("sigmoid", X), [np.array([-1000.0, 0.0, 1000.0], np.float32)])
    np.testing.assert_array_equal(s, [0.0, 0.5, 1.0])  # no overflow warning, no NaN
    y1, y2 = evaluate_many([Unary("neg", X), Cast(X, "int32")], [np.array([1.5, -2.5], np.float32)])
    assert y1.tolist() == [-1.5, 2.5] and y2.dtype == np.int32 and y2.tolist() == [1, -2]
    with pytest.raises(ExprError, match="reads in1"):
        evaluate(Binary("add", X, Y), [np.ones(2)])


def _ref(op, arrays, attrs, opset=20):
    b = GraphBuilder(opset=opset)
    ins = [b.input(f"i{k}", a.shape, str(a.dtype)) if a is not None else None for k, a in enumerate(arrays)]
    out = b.op(op, *ins, **attrs)
    b.output(out, "y")
    feeds = {f"i{k}": a for k, a in enumerate(arrays) if a is not None}
    (y,) = run_reference(b.graph, feeds)
    return y, out.producer


rng = np.random.default_rng(0)
F = rng.standard_normal((3, 4)).astype(np.float32)
F2 = rng.standard_normal((1, 4)).astype(np.float32)
POS = (np.abs(F) + 0.5).astype(np.float32)
UNIT = np.clip(F, -0.9, 0.9).astype(np.float32)
I = rng.integers(-5, 6, (3, 4)).astype(np.int32)
I2 = rng.integers(1, 4, (3, 4)).astype(np.int32)
B1, B2 = F > 0, F2 > 0.3

CASES = [(op, [F], {}) for op in ("Relu", "Neg", "Abs", "Exp", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
                                  "Tan", "Atan", "Sinh", "Cosh", "Asinh", "Tanh", "Sigmoid", "Erf", "Softplus",
                                  "Softsign", "Mish", "HardSwish", "Identity", "IsNaN")]
CASES += [(op, [POS], {}) for op in ("Log", "Sqrt", "Reciprocal", "Acosh")]
CASES += [(op, [UNIT], {}) for op in ("Asin", "Acos", "Atanh")]
CASES += [(op, [F, F2], {}) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Equal", "Less",
                                       "LessOrEqual", "Greater", "GreaterOrEqual", "PRelu")]
CASES += [(op, [I, I2], {}) for op in ("Add", "Sub", "Mul", "Div", "BitwiseAnd", "BitwiseOr", "BitwiseXor")]
CASES += [(op, [B1, B2], {}) for op in ("And", "Or", "Xor")]
CASES += [
    ("Not", [B1], {}), ("Pow", [POS, F2], {}), ("Pow", [POS, np.array(2, np.int64)], {}),
    ("Max", [F, F2, np.float32([[0.1, 0.2, 0.3, 0.4]])], {}), ("Sum", [F, F2, F], {}),
    ("LeakyRelu", [F], {"alpha": 0.2}), ("ThresholdedRelu", [F], {"alpha": 0.5}),
    ("HardSigmoid", [F], {"alpha": 0.3, "beta": 0.4}), ("Elu", [F], {"alpha": 0.7}), ("Selu", [F], {}),
    ("Celu", [F], {"alpha": 1.3}), ("Gelu", [F], {}), ("Gelu", [F], {"approximate": "tanh"}),
    ("Clip", [F, np.float32(-0.5), np.float32(0.5)], {}), ("Clip", [F, None, np.float32(0.5)], {}),
    ("Where", [B1, F, F2], {}), ("Cast", [F], {"to": 6}), ("Cast", [I], {"to": 1}), ("Cast", [F], {"to": 9}),
    ("CastLike", [F, np.zeros(1, np.float16)], {}),
    ("IsInf", [np.float32([1, np.inf, -np.inf, np.nan])], {"detect_negative": 0}),
]


@pytest.mark.parametrize("op, arrays, attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_onnx_op_expression_matches_the_registry_kernel(op, arrays, attrs):
    want, node = _ref(op, arrays, attrs)
    e = node_to_expr(node, [None if v is None else Input(i) for i, v in enumerate(node.inputs)])
    assert e is not None, f"{op} has no expression form"
    assert dtype_of(e, [None if v is None else v.dtype for v in node.inputs]) == node.output.dtype
    got = evaluate(e, [a for a in arrays])
    got = np.broadcast_to(got, want.shape)
    assert got.dtype == want.dtype
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)
    assert parse_expr(format_expr(e)) == e


def test_clip_from_attributes_of_old_opsets():
    want, node = _ref("Clip", [F], {"min": -0.25, "max": 0.25}, opset=6)
    e = node_to_expr(node, [Input(0)])
    assert format_expr(e) == "min(max(in0, -0.25), 0.25)"
    np.testing.assert_array_equal(evaluate(e, [F]), want)


def test_every_registry_elementwise_op_of_the_core_has_an_expression():
    """Fusion covers the pointwise ops graphs are made of; what is left out is named here."""
    missing = []
    for s in all_schemas():
        if not s.elementwise or s.domain != "" or len(s.outputs) != 1:
            continue
        ins = [Input(i) for i in range(max(1, len([n for n in s.inputs if not n.startswith("?")])))]
        if onnx_to_expr(s.op_type, ins, s.resolve_attrs({"to": 1}), ["float32"] * len(ins)) is None:
            missing.append(s.op_type)
    core = {"Relu", "Add", "Mul", "Sigmoid", "Tanh", "Gelu", "Clip", "LeakyRelu", "HardSwish", "Where", "Cast",
            "Erf", "Pow", "Sqrt", "Div", "Sub", "Max", "Min", "Equal", "Less", "Greater", "Not", "Neg", "Abs"}
    assert not core & set(missing)
    assert set(UNARY_OPS.values()) | set(BINARY_OPS.values()) <= {s.op_type for s in all_schemas()}


def test_string_and_unknown_dtypes_have_no_expression():
    assert onnx_to_expr("Add", [X, Y], {}, [None, None]) is None
    assert onnx_to_expr("Identity", [X], {}, ["string"]) is None
    assert onnx_to_expr("NoSuchOp", [X], {}, ["float32"]) is None
    assert math.isinf(parse_expr("-inf").value)
