"""simplify_slices: slices and splits put back together become the tensor (or one Slice),
a Slice that picks one Concat input becomes that input; near misses stay."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

from pass_helpers import ops, refusals

I64 = np.int64


def simplify(g):
    return run_passes(g, ["simplify_slices", "eliminate_dead_code"], fixed_point=False).records[0]


def sl(b, x, start, end, axis, step=None):
    args = [x, np.array([start], I64), np.array([end], I64), np.array([axis], I64)]
    return b.op("Slice", *args, *([] if step is None else [np.array([step], I64)]))


def split(b, x, sizes, axis):
    return b.op("Split", x, np.array(sizes, I64), axis=axis, num_outputs=len(sizes))


# (name, input shape, body(b, x) -> y, ops left, rule)
FIRES = [
    ("slices_whole_axis", (2, 6), lambda b, x: b.op("Concat", sl(b, x, 0, 2, 1), sl(b, x, 2, 6, 1), axis=1),
     ["Relu"], "concat_adjacent_slices_to_slice"),
    ("slices_symbolic_to_end", ("n", 4, 6),
     lambda b, x: b.op("Concat", sl(b, x, 0, 1, 1), sl(b, x, 1, 3, 1), sl(b, x, 3, 2 ** 63 - 1, 1), axis=-2),
     ["Relu"], "concat_adjacent_slices_to_slice"),
    ("slices_part_to_one_slice", (2, 8),
     lambda b, x: b.op("Concat", sl(b, x, 1, 3, -1), sl(b, x, 3, -2, 1), axis=1), ["Relu", "Slice"],
     "concat_adjacent_slices_to_slice"),
    ("slices_run_inside_concat", (2, 8),
     lambda b, x: b.op("Concat", x, sl(b, x, 0, 3, 1), sl(b, x, 3, 5, 1), x, axis=1), ["Relu", "Slice", "Concat"],
     "concat_adjacent_slices_to_slice"),
    ("split_back", ("n", 6, 4), lambda b, x: b.op("Concat", *split(b, x, [1, 2, 3], 1), axis=1), ["Relu"],
     "concat_split_outputs_to_input"),
    ("split_equal_attr_opset13", (4, 6),
     lambda b, x: b.op("Concat", *b.op("Split", x, axis=0, num_outputs=2), axis=0), ["Relu"],
     "concat_split_outputs_to_input"),
    ("split_pair_to_slice", (2, 6),
     lambda b, x: b.op("Concat", *split(b, x, [1, 2, 3], 1)[:2], axis=1), ["Relu", "Slice"],
     "concat_split_outputs_to_input"),
    ("slice_picks_concat_input", (2, 3),
     lambda b, x: sl(b, b.op("Concat", x, b.op("Neg", x), x, axis=1), 3, 6, 1), ["Relu", "Neg"],
     "slice_of_concat_to_input"),
    ("slice_picks_last_input_to_end", (2, 3),
     lambda b, x: sl(b, b.op("Concat", x, b.op("Neg", x), axis=1), -3, 2 ** 31 - 1, 1), ["Relu", "Neg"],
     "slice_of_concat_to_input"),
    ("concat_with_empty", (2, 3), lambda b, x: b.op("Concat", np.zeros((2, 0), np.float32), x, axis=1),
     ["Relu"], "concat_empty_inputs_to_concat"),
]


@pytest.mark.parametrize("name,shape,body,left,rule", FIRES, ids=[f[0] for f in FIRES])
def test_fires_and_keeps_numbers(name, shape, body, left, rule):
    b = GraphBuilder(opset=18 if "opset13" not in name else 13)
    x = b.op("Relu", b.input("x", shape))  # not a graph input: the result can take the output name
    b.output(body(b, x), "y")
    g0 = b.graph.clone()
    rec = simplify(b.graph)
    assert rec.modified and rule in rec.stats
    assert ops(b.graph) == left
    assert b.graph.outputs[0].name == "y" and b.graph.outputs[0].type == g0.outputs[0].type
    assert_same_outputs(g0, b.graph)


def test_split_read_elsewhere_still_gives_the_whole_tensor():
    b = GraphBuilder(opset=18)
    x = b.op("Relu", b.input("x", (2, 6)))
    parts = split(b, x, [2, 4], 1)
    b.output(b.op("Concat", *parts, axis=1), "y")
    b.output(b.op("Neg", parts[0]), "z")
    g0 = b.graph.clone()
    assert simplify(b.graph).modified
    assert ops(b.graph) == ["Relu", "Split", "Neg"]
    assert_same_outputs(g0, b.graph)


def refused(body, shape=(2, 8)):
    return refusals(lambda b: body(b, b.op("Relu", b.input("x", shape))), ["simplify_slices"], 18)


@pytest.mark.parametrize("body", [
    lambda b, x: b.op("Concat", sl(b, x, 0, 2, 1), sl(b, x, 3, 8, 1), axis=1),          # a gap
    lambda b, x: b.op("Concat", sl(b, x, 2, 8, 1), sl(b, x, 0, 2, 1), axis=1),          # out of order
    lambda b, x: b.op("Concat", sl(b, x, 0, 1, 0), sl(b, x, 1, 2, 0), axis=1),          # sliced along another axis
    lambda b, x: b.op("Concat", sl(b, x, 0, 4, 1, 2), sl(b, x, 4, 8, 1, 2), axis=1),    # step 2
    lambda b, x: b.op("Concat", *split(b, x, [4, 4], 1)[::-1], axis=1),                  # split reversed
    lambda b, x: sl(b, b.op("Concat", x, x, axis=1), 2, 10, 1),                          # straddles two inputs
], ids=["gap", "order", "other_axis", "step", "split_reversed", "straddles"])
def test_not_a_round_trip_is_left_alone(body):
    assert refused(body) == set()


def test_slices_with_other_readers_are_refused():
    def body(b, x):
        a, c = sl(b, x, 0, 2, 1), sl(b, x, 2, 5, 1)
        return b.op("Concat", a, c, axis=1), b.op("Neg", a)
    assert refused(body) == {"the Slice outputs have other readers"}


def test_slice_of_concat_with_symbolic_sizes_is_refused():
    def body(b, x):
        y = b.input("y", (2, "m"))
        return sl(b, b.op("Concat", y, x, axis=1), 2, 4, 1)
    assert refused(body) == {"Concat input sizes along the axis not static"}
