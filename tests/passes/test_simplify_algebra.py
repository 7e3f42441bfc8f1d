"""simplify_algebra: at -O1 exact rewrites fire and keep every bit (signed zeros, inf and
NaN included); the inexact look-alikes are left alone, near misses with their reason.
At -O2 a zero of either sign is dropped from sums (only a zero's sign may change)."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, random_feeds, run_passes

from pass_helpers import ops, refusals

F32 = np.float32
I64 = np.int64
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
SPECIAL = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-40, 3e38], F32)


def simplify(g, level=1):
    return run_passes(g, ["simplify_algebra", "eliminate_dead_code"], fixed_point=False, level=level).records[0]


def feeds_with_specials(g):
    """Random feeds whose float inputs start with -0.0, +-inf, NaN and a subnormal."""
    feeds = random_feeds(g, seed=1)
    for k, a in feeds.items():
        if a.dtype.kind == "f":
            flat = a.reshape(-1)
            n = min(flat.size, SPECIAL.size)
            flat[:n] = SPECIAL[:n].astype(a.dtype)
    return feeds


def assert_bitwise_same(g0, g1):
    feeds = feeds_with_specials(g0)
    from graphopt.plugins.cpu.backend import run_reference

    for e, o in zip(run_reference(g0, feeds), run_reference(g1, feeds)):
        assert e.dtype == o.dtype and e.shape == o.shape
        if e.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(e), np.signbit(o))
            np.testing.assert_array_equal(np.isnan(e), np.isnan(o))
            np.testing.assert_array_equal(np.nan_to_num(e), np.nan_to_num(o))
        else:
            np.testing.assert_array_equal(e, o)


# (name, input shape, dtype, body(b, x) -> y, ops left, rule that fired)
FIRES = [
    ("mul_one", (2, 3), "float32", lambda b, x: b.op("Mul", x, F32(1)), [], "mul_one_to_input"),
    ("one_mul_broadcast_row", (2, 3), "float32", lambda b, x: b.op("Mul", np.ones((1, 3), F32), x), [],
     "mul_one_to_input"),
    ("div_one", ("n", 3), "float32", lambda b, x: b.op("Div", x, F32(1)), [], "div_one_to_input"),
    ("add_negative_zero", (2, 3), "float32", lambda b, x: b.op("Add", F32(-0.0), x), [],
     "add_negative_zero_to_input"),
    ("add_int_zero", (2, 3), "int64", lambda b, x: b.op("Add", x, np.zeros(3, I64)), [],
     "add_negative_zero_to_input"),
    ("sub_zero", (2, 3), "float32", lambda b, x: b.op("Sub", x, F32(0)), [], "sub_zero_to_input"),
    ("negative_zero_minus", (2, 3), "float32", lambda b, x: b.op("Sub", F32(-0.0), x), ["Neg"],
     "sub_from_negative_zero_to_neg"),
    ("int_zero_minus", (2, 3), "int32", lambda b, x: b.op("Sub", np.int32(0), x), ["Neg"],
     "sub_from_negative_zero_to_neg"),
    ("mul_minus_one", (2, 3), "float32", lambda b, x: b.op("Mul", x, F32(-1)), ["Neg"], "mul_minus_one_to_neg"),
    ("div_minus_one", (2, 3), "float32", lambda b, x: b.op("Div", x, F32(-1)), ["Neg"], "div_minus_one_to_neg"),
    ("div_four", (2, 3), "float32", lambda b, x: b.op("Div", x, F32(4)), ["Mul"], "div_power_of_two_to_mul"),
    ("div_eighth_vector", (2, 3), "float32", lambda b, x: b.op("Div", x, np.array([0.125, 2, -8], F32)), ["Mul"],
     "div_power_of_two_to_mul"),
    ("pow_one", (2, 3), "float32", lambda b, x: b.op("Pow", x, F32(1)), [], "pow_small_integer_to_simpler"),
    ("pow_two", (2, 3), "float32", lambda b, x: b.op("Pow", x, F32(2)), ["Mul"], "pow_small_integer_to_simpler"),
    ("pow_minus_one", (2, 3), "float32", lambda b, x: b.op("Pow", x, I64(-1)), ["Reciprocal"],
     "pow_small_integer_to_simpler"),
    ("neg_neg", (2, 3), "float32", lambda b, x: b.op("Neg", b.op("Neg", x)), [], "neg_neg_to_input"),
    ("not_not", (2, 3), "bool", lambda b, x: b.op("Not", b.op("Not", x)), [], "not_not_to_input"),
    ("relu_relu", (2, 3), "float32", lambda b, x: b.op("Relu", b.op("Relu", x)), ["Relu"], "relu_relu_to_relu"),
    ("floor_floor", (2, 3), "float32", lambda b, x: b.op("Floor", b.op("Floor", x)), ["Floor"],
     "floor_floor_to_floor"),
    ("abs_neg", (2, 3), "float32", lambda b, x: b.op("Abs", b.op("Neg", x)), ["Abs"], "abs_neg_to_abs"),
    ("cast_i32_i64_i32", (2, 3), "int32", lambda b, x: b.op("Cast", b.op("Cast", x, to=7), to=6), [],
     "cast_lossless_cast_to_cast"),
    ("cast_f32_f64_f32", (2, 3), "float32", lambda b, x: b.op("Cast", b.op("Cast", x, to=11), to=1), [],
     "cast_lossless_cast_to_cast"),
    ("cast_f16_f32_f64", (2, 3), "float16", lambda b, x: b.op("Cast", b.op("Cast", x, to=1), to=11), ["Cast"],
     "cast_lossless_cast_to_cast"),
    ("cast_bool_i32_f32", (2, 3), "bool", lambda b, x: b.op("Cast", b.op("Cast", x, to=6), to=1), ["Cast"],
     "cast_lossless_cast_to_cast"),
]


@pytest.mark.parametrize("name,shape,dtype,body,left,rule", FIRES, ids=[f[0] for f in FIRES])
def test_fires_and_keeps_every_bit(name, shape, dtype, body, left, rule):
    b = GraphBuilder(opset=17)
    b.output(body(b, b.input("x", shape, dtype)), "y")
    g0 = b.graph.clone()
    rec = simplify(b.graph)
    assert rec.modified and rec.stats == {rule: 1}
    assert ops(b.graph) == (left or ["Identity"])  # an input passed to the output keeps its name in an Identity
    assert b.graph.outputs[0].name == "y"
    assert_same_outputs(g0, b.graph)
    assert_bitwise_same(g0, b.graph)


def test_shared_inner_neg_stays_for_its_other_reader():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 3))
    inner = b.op("Neg", x)
    b.output(b.op("Relu", b.op("Neg", inner)), "y")
    b.output(b.op("Exp", inner), "z")
    g0 = b.graph.clone()
    assert simplify(b.graph).modified
    assert ops(b.graph) == ["Neg", "Relu", "Exp"]
    assert b.graph.nodes[1].input(0) is x
    assert_same_outputs(g0, b.graph)


def test_graph_input_passed_straight_to_output_keeps_an_identity():
    b = GraphBuilder(opset=17)
    b.output(b.op("Mul", b.input("x", (2,)), F32(1)), "y")
    g0 = b.graph.clone()
    assert simplify(b.graph).modified
    assert ops(b.graph) == ["Identity"] and b.graph.outputs[0].name == "y"
    assert_same_outputs(g0, b.graph)


def refused(body, shape=(2, 3), dtype="float32", level=1):
    return refusals(lambda b: body(b, b.input("x", shape, dtype)), ["simplify_algebra"], level=level)


@pytest.mark.parametrize("body,why", [
    (lambda b, x: b.op("Add", x, F32(0)), "x + 0.0 maps -0.0 to +0.0 (only x + -0.0 is exact)"),
    (lambda b, x: b.op("Sub", x, F32(-0.0)), "x - (-0.0) maps -0.0 to +0.0 (only x - 0.0 is exact)"),
    (lambda b, x: b.op("Sub", F32(0), x), "0.0 - x is not Neg(x) for x = +0.0 (only -0.0 - x is)"),
    (lambda b, x: b.op("Mul", x, np.ones((4, 2, 3), F32)), "the constant broadcasts x from [2, 3] to a bigger shape"),
    (lambda b, x: b.op("Cast", b.op("Cast", x, to=10), to=1), "Cast float32 -> float16 loses values"),
    (lambda b, x: b.op("Cast", b.op("Cast", x, to=6), to=1), "Cast float32 -> int32 loses values"),
    (lambda b, x: b.op("Div", x, F32(2.0 ** -140)), "1/c is not representable (over- or underflows)"),
], ids=["add_positive_zero", "sub_negative_zero", "positive_zero_minus", "broadcast_grows", "cast_via_f16",
        "cast_via_int", "reciprocal_overflows"])
def test_near_misses_are_refused_with_reason(body, why):
    assert refused(body) == {why}


def test_integer_division_by_minus_one_is_refused():
    assert refused(lambda b, x: b.op("Div", x, np.int32(-1)), dtype="int32") == {
        "integer x / -1 overflows for the smallest value"}


@pytest.mark.parametrize("body", [
    lambda b, x: b.op("Mul", x, F32(0)),                    # NaN * 0 is NaN
    lambda b, x: b.op("Sub", x, x),                         # NaN - NaN is NaN
    lambda b, x: b.op("Div", x, x),
    lambda b, x: b.op("Pow", x, F32(0.5)),                  # pow(-0.0, 0.5) = +0.0, sqrt(-0.0) = -0.0
    lambda b, x: b.op("Mul", b.op("Sqrt", x), b.op("Sqrt", x)),
    lambda b, x: b.op("Div", x, F32(3)),                    # 1/3 is rounded
    lambda b, x: b.op("Mul", b.op("Mul", x, F32(3)), F32(5)),
    lambda b, x: b.op("Relu", b.op("Neg", x)),
], ids=["mul_zero", "sub_self", "div_self", "pow_half", "sqrt_sqrt", "div_three", "mul_mul", "relu_neg"])
def test_inexact_look_alikes_are_not_rewritten(body):
    assert refused(body) == set()


@pytest.mark.parametrize("body,left,rule", [
    (lambda b, x: b.op("Add", x, F32(0)), [], "add_zero_to_input"),
    (lambda b, x: b.op("Add", np.zeros((1, 3), F32), x), [], "add_zero_to_input"),
    (lambda b, x: b.op("Sub", x, F32(-0.0)), [], "sub_any_zero_to_input"),
    (lambda b, x: b.op("Sub", F32(0), x), ["Neg"], "sub_from_zero_to_neg"),
], ids=["add_positive_zero", "add_zero_row", "sub_negative_zero", "positive_zero_minus"])
def test_o2_treats_zeros_of_either_sign_as_equal(body, left, rule):
    b = GraphBuilder(opset=17)
    b.output(body(b, b.input("x", (2, 3))), "y")
    g0 = b.graph.clone()
    rec = simplify(b.graph, level=2)
    assert rec.stats == {rule: 1} and ops(b.graph) == (left or ["Identity"])
    feeds = feeds_with_specials(g0)  # -0.0, +-inf, NaN: equal values, only a zero's sign may differ
    from graphopt.plugins.cpu.backend import run_reference

    (e,), (o,) = run_reference(g0, feeds), run_reference(b.graph, feeds)
    np.testing.assert_array_equal(e, o)  # -0.0 == +0.0, NaN where NaN
    assert (np.signbit(e) != np.signbit(o)).sum() <= 1 and all(e[np.signbit(e) != np.signbit(o)] == 0)


def test_o2_still_refuses_what_is_not_a_zero_and_what_grows_x():
    assert refused(lambda b, x: b.op("Add", x, np.zeros((4, 2, 3), F32)), level=2) == {
        "the constant broadcasts x from [2, 3] to a bigger shape"}
    assert refused(lambda b, x: b.op("Add", x, F32(1e-30)), level=2) == set()
