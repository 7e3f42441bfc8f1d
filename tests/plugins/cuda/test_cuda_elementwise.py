"""Elementwise / broadcast / strided-copy kernels under emulation vs the NumPy reference:
every expression primitive (each ONNX pointwise op goes through graphopt.expr, so its
kernel and its reference share one definition), fused multi-output expressions, and
awkward shapes (odd sizes, size-1 and zero-size dims, broadcasting, transposed, reversed
and widely strided views, 64-bit indexing), plus an nvcc sm_90 check of each."""
import dataclasses

import numpy as np

from cuda_harness import Case, kernel_module_tests
from graphopt.expr import UNARY_OPS, Input, evaluate_many, node_to_expr, parse_exprs
from graphopt.ir import Node, TensorType, Value
from graphopt.ops.registry import KernelContext, get_schema
from graphopt.plugins.cuda.ew import make_elementwise, render_elementwise
from graphopt.plugins.cuda.exprc import expr_fn
from graphopt.plugins.cuda.scalar import broadcast_strides, contiguous_strides, identity
from graphopt.plugins.cuda.specs import View

CASES: list[Case] = []


def _node(op, in_types, out_dtype, attrs=None):
    ins = [Value(f"x{i}", TensorType(dt, shape)) for i, (dt, shape) in enumerate(in_types)]
    return Node(op, ins, [Value("y", TensorType(out_dtype, None))], attrs or {})


def _domain_input(op, rng, shape):
    if op in ("Asin", "Acos", "Atanh"):
        return rng.uniform(-0.9, 0.9, shape).astype(np.float32)
    if op == "Acosh":
        return rng.uniform(1.1, 3.0, shape).astype(np.float32)
    if op in ("Log", "Sqrt", "Reciprocal", "Pow"):
        return rng.uniform(0.1, 3.0, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 2).astype(np.float32)


def op_case(op, in_types, out_dtype, out_shape, attrs=None, make_inputs=None, tol=(1e-4, 1e-5)):
    node = _node(op, in_types, out_dtype, attrs)
    fn = expr_fn([node_to_expr(node, [Input(i) for i in range(len(in_types))])], [dt for dt, _ in in_types])
    views = [View(dt, broadcast_strides(shape, out_shape)) for dt, shape in in_types]
    spec = make_elementwise(out_shape, View.contiguous(out_dtype, out_shape), views, fn)
    schema = get_schema(op)

    def make(rng):
        if make_inputs:
            ins = make_inputs(rng)
        else:
            ins = [_domain_input(op, rng, shape) for _, shape in in_types]
        attrs_full = schema.resolve_attrs(attrs or {})
        ref = schema.kernel(ins, attrs_full, KernelContext(node=node))[0]
        return out_shape, out_dtype, ins, np.broadcast_to(ref, out_shape)

    CASES.append(Case(f"{op}-{'x'.join(map(str, out_shape))}", render_elementwise(spec), spec, make, *tol))


F = "float32"
for _op in sorted(set(UNARY_OPS.values()) - {"Not", "IsNaN"}):
    op_case(_op, [(F, (3, 37))], F, (3, 37))
op_case("IsNaN", [(F, (9,))], "bool", (9,),
        make_inputs=lambda rng: [np.where(rng.random(9) < 0.4, np.nan, 1.0).astype(np.float32)])
for _op in ("Softsign", "HardSwish", "Mish"):
    op_case(_op, [(F, (4, 9))], F, (4, 9))
for _op, _attrs in [("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 1.3}),
                    ("ThresholdedRelu", {"alpha": 0.5}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Relu", {}), ("Neg", {}), ("Abs", {}),
                    ("Sign", {}), ("Identity", {})]:
    op_case(_op, [(F, (5, 11))], F, (5, 11), _attrs)
for _op in ("Add", "Sub", "Mul", "Div", "PRelu"):
    op_case(_op, [(F, (4, 1, 7)), (F, (3, 1))], F, (4, 3, 7))
op_case("Pow", [(F, (2, 9)), (F, (9,))], F, (2, 9))
for _op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
    op_case(_op, [(F, (6, 5)), (F, (5,))], "bool", (6, 5),
            make_inputs=lambda rng: [np.round(rng.standard_normal((6, 5))).astype(np.float32),
                                     np.round(rng.standard_normal(5)).astype(np.float32)])
for _op in ("And", "Or", "Xor"):
    op_case(_op, [("bool", (3, 8)), ("bool", (1, 8))], "bool", (3, 8),
            make_inputs=lambda rng: [rng.random((3, 8)) > 0.5, rng.random((1, 8)) > 0.5])
op_case("Not", [("bool", (13,))], "bool", (13,), make_inputs=lambda rng: [rng.random(13) > 0.5])
op_case("Where", [("bool", (4, 1)), (F, (4, 6)), (F, (6,))], F, (4, 6),
        make_inputs=lambda rng: [rng.random((4, 1)) > 0.5, rng.standard_normal((4, 6)).astype(np.float32),
                                 rng.standard_normal(6).astype(np.float32)])
op_case("Cast", [(F, (3, 7))], "int64", (3, 7), {"to": 7})
op_case("Cast", [(F, (3, 7))], "bool", (3, 7), {"to": 9},
        make_inputs=lambda rng: [np.round(rng.standard_normal((3, 7))).astype(np.float32)])
op_case("Cast", [("int64", (10,))], F, (10,), {"to": 1},
        make_inputs=lambda rng: [rng.integers(-50, 50, 10)])
op_case("Add", [("int64", (2, 5)), ("int64", (1,))], "int64", (2, 5),
        make_inputs=lambda rng: [rng.integers(-9, 9, (2, 5)), rng.integers(-9, 9, 1)])
op_case("Clip", [(F, (5, 6)), (F, ()), (F, ())], F, (5, 6),
        make_inputs=lambda rng: [rng.standard_normal((5, 6)).astype(np.float32), np.float32(-0.5), np.float32(0.7)])
H16 = "float16"
_h = dict(tol=(2e-3, 2e-3))  # one half rounding of the result
op_case("Add", [(H16, (3, 1, 9)), (H16, (5, 1))], H16, (3, 5, 9),
        make_inputs=lambda rng: [rng.standard_normal((3, 1, 9)).astype(np.float16),
                                 rng.standard_normal((5, 1)).astype(np.float16)], **_h)
op_case("Sigmoid", [(H16, (4, 7))], H16, (4, 7),
        make_inputs=lambda rng: [rng.standard_normal((4, 7)).astype(np.float16)], **_h)
op_case("Cast", [(F, (6, 5))], H16, (6, 5), {"to": 10})
op_case("Cast", [(H16, (6, 5))], "int64", (6, 5), {"to": 7},
        make_inputs=lambda rng: [(rng.standard_normal((6, 5)) * 9).astype(np.float16)])
for _op in ("Max", "Min", "Sum", "Mean"):
    op_case(_op, [(F, (3, 4)), (F, (4,)), (F, (3, 1))], F, (3, 4))


def expr_case(cid, text, in_shapes, out_shape, in_dtypes=None):
    """A fused expression (several results, shared subexpressions) vs ``graphopt.expr.evaluate_many``."""
    exprs = parse_exprs(text)
    in_dtypes = in_dtypes or [F] * len(in_shapes)
    fn = expr_fn(exprs, in_dtypes)
    views = [View(dt, broadcast_strides(sh, out_shape)) for dt, sh in zip(in_dtypes, in_shapes)]
    outs = [View.contiguous(dt, out_shape) for dt in fn.out_dtypes]
    spec = make_elementwise(out_shape, outs, views, fn)

    def make(rng):
        ins = [rng.standard_normal(sh).astype(dt) for sh, dt in zip(in_shapes, in_dtypes)]
        refs = [np.broadcast_to(r, out_shape) for r in evaluate_many(exprs, ins)]
        return out_shape, refs[0].dtype, ins, refs[0], [(out_shape, r.dtype, r) for r in refs[1:]]

    CASES.append(Case(cid, render_elementwise(spec), spec, make, 1e-5, 1e-5, outputs_first=True))


expr_case("expr-two-results-shared", "t0 = add(mul(in0, in1), 0.5); relu(t0), sigmoid(t0)", [(5, 1), (7,)], (5, 7))
expr_case("expr-select-cast", "select(gt(in0, in1), cast<int64>(mul(in0, 10.0)), 3:int64), le(in0, 0.0)",
          [(6,), (6,)], (6,))


def copy_case(cid, shape, in_view: View, src_shape, out_view: View | None = None, out_shape=None, force_idx=None,
              dtype=F):
    """A strided copy: input read through ``in_view`` (over ``shape``) from a buffer of ``src_shape``."""
    out_view = out_view or View.contiguous(F, shape)
    out_shape = out_shape or shape
    spec = make_elementwise(shape, out_view, [in_view], identity(dtype))
    if force_idx:
        spec = dataclasses.replace(spec, index_t=force_idx)

    def make(rng):
        src = rng.standard_normal(src_shape).astype(dtype)
        flat = src.reshape(-1)
        idx = np.full(shape, in_view.offset, np.int64)
        for d, (n, s) in enumerate(zip(shape, in_view.strides)):
            idx = idx + (np.arange(n) * s).reshape([-1 if i == d else 1 for i in range(len(shape))])
        vals = flat[idx] if idx.size else np.zeros(shape, np.float32)
        expected = np.full(out_shape, np.nan, dtype)
        oflat = expected.reshape(-1)
        oidx = np.full(shape, out_view.offset, np.int64)
        for d, (n, s) in enumerate(zip(shape, out_view.strides)):
            oidx = oidx + (np.arange(n) * s).reshape([-1 if i == d else 1 for i in range(len(shape))])
        oflat[oidx.reshape(-1)] = vals.reshape(-1)
        return out_shape, dtype, [src], expected

    CASES.append(Case(cid, render_elementwise(spec), spec, make))


copy_case("contiguous-vec4", (8, 16), View.contiguous(F, (8, 16)), (8, 16))
copy_case("odd-size", (7, 13), View.contiguous(F, (7, 13)), (7, 13))
copy_case("size-one-dims", (1, 7, 1), View.contiguous(F, (1, 7, 1)), (1, 7, 1))
copy_case("zero-size", (3, 0, 5), View.contiguous(F, (3, 0, 5)), (3, 0, 5))
copy_case("scalar-broadcast", (5, 9), View(F, (0, 0)), (1,))
copy_case("transpose-201", (6, 4, 5), View(F, tuple(contiguous_strides((4, 5, 6))[p] for p in (2, 0, 1))), (4, 5, 6))
copy_case("reversed-slice", (5, 4), View(F, (-8, 2), 33), (5, 8))  # rows backwards, odd columns
copy_case("large-strides", (3, 4), View(F, (100003, 7), 11), (3 * 100003,))
copy_case("concat-slot", (4, 3), View.contiguous(F, (4, 3)), (4, 3), View(F, (10, 1), 5), (4, 10))
copy_case("half-bits-moved", (5, 6), View("float16", (1, 5)), (6, 5), View.contiguous("float16", (5, 6)),
          dtype="float16")
copy_case("index64-forced", (9, 31), View(F, (31, 1)), (9, 31), force_idx="long long")


_HUGE = (3, 1 << 30)
_BIG = render_elementwise(make_elementwise(_HUGE, View.contiguous(F, _HUGE), [View(F, (1, 3))], identity(F)))
lib, test_elementwise_kernel_matches_reference, test_every_elementwise_kernel_compiles_for_sm90 = \
    kernel_module_tests(CASES, max_registers=64, extra_kernels=[_BIG])


def test_schedule_choices_are_recorded():
    by_id = {c.id: c.spec for c in CASES}
    assert by_id["contiguous-vec4"].vec == 4 and by_id["contiguous-vec4"].shape == (128,)  # collapsed to 1-D
    assert by_id["odd-size"].vec == 1
    assert by_id["transpose-201"].shape == (6, 20)  # input dims 0 and 1 stay adjacent: merged
    assert by_id["scalar-broadcast"].inputs[0].strides == (0,)
    assert by_id["size-one-dims"].shape == (7,)
    assert by_id["odd-size"].index_t == "int"


def test_huge_extents_switch_to_64bit_indices():
    assert _BIG.spec.index_t == "long long"
    assert "long long i =" in _BIG.source
