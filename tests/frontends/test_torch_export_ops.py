"""ATen converters: torch.export -> graphopt IR -> NumPy reference and onnxruntime, compared with
torch eager (dtype, shape and values), plus the structure a converter is expected
to emit. Cases of one family share one module (one export per family keeps the
suite fast); when a family fails, each of its cases runs alone to name the culprit."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.export import Dim  # noqa: E402

from graphopt.frontends.torch_export import load_module  # noqa: E402
from graphopt.plugins.cpu.backend import run_reference  # noqa: E402


class Fn(nn.Module):
    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            self.register_buffer(k, v)

    def forward(self, *args):
        return self.fn(self, *args)


def _onnxruntime_session(g, tmp_dir):
    """The graph as a standard opset-17 ONNX model in onnxruntime (None without onnx/onnxruntime)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    import graphopt

    path = graphopt.save(g, tmp_dir / "model.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_same(got, want, rtol, atol):
    assert len(got) == len(want)
    for a, w in zip(got, want):
        w = w.numpy()
        assert a.dtype == w.dtype, (a.dtype, w.dtype)
        assert a.shape == w.shape, (a.shape, w.shape)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(a, w)
        else:
            np.testing.assert_allclose(a, w, rtol=rtol, atol=atol)


def check(fn, *inputs, dynamic_shapes=None, rtol=1e-5, atol=1e-5, module=None, feeds_for=None):
    """Convert; run on the reference and in onnxruntime; compare with eager. Returns the graph."""
    import pathlib
    import tempfile

    m = module if module is not None else Fn(fn)
    g = load_module(m.eval(), inputs, dynamic_shapes=dynamic_shapes)
    g.verify()
    with tempfile.TemporaryDirectory() as tmp:
        sess = _onnxruntime_session(g, pathlib.Path(tmp))
        for run_inputs in [inputs] + list(feeds_for or []):
            feeds = {v.name: a.numpy() for v, a in zip(g.inputs, run_inputs)}
            with torch.no_grad():
                want = m(*run_inputs)
            want = list(want) if isinstance(want, (tuple, list)) else [want]
            _assert_same(run_reference(g, feeds), want, rtol, atol)
            if sess is not None:
                _assert_same(sess.run(None, feeds), want, rtol, atol)
    return g


def ops(g):
    return [n.op_type for n in g]


rng = np.random.default_rng(0)


def randn(*shape, dtype=torch.float32):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)


def randint(lo, hi, *shape):
    return torch.from_numpy(rng.integers(lo, hi, shape))


# (id, fn, inputs) -- fn(self, *inputs)
ELEMENTWISE = [
    ("add_alpha", lambda s, a, b: torch.add(a, b, alpha=2), (randn(3, 4), randn(4))),
    ("sub_alpha", lambda s, a, b: torch.sub(a, b, alpha=0.5), (randn(3, 4), randn(3, 1))),
    ("rsub", lambda s, a: 1 - a, (randn(3),)),
    ("int_plus_float_scalar", lambda s, a: a + 2.5, (randint(0, 9, 3, 4),)),
    ("int_times_float_tensor", lambda s, a, b: a * b, (randint(0, 9, 3, 4), randn(4))),
    ("half_plus_0d_float", lambda s, a, b: a + b, (randn(3, dtype=torch.float16), torch.tensor(1.5))),
    ("int_plus_0d_float", lambda s, a, b: a + b, (randint(0, 9, 3), torch.tensor(1.5))),
    ("bool_plus_int", lambda s, a: (a > 0) + 3, (randn(5),)),
    ("int_true_div", lambda s, a: a / 2, (randint(-9, 9, 6),)),
    ("div_floor_int", lambda s, a, b: torch.div(a, b, rounding_mode="floor"),
     (randint(-9, 9, 20), torch.tensor([3, -3] * 10))),
    ("div_trunc_int", lambda s, a, b: torch.div(a, b, rounding_mode="trunc"),
     (randint(-9, 9, 20), torch.tensor([3, -3] * 10))),
    ("div_floor_float", lambda s, a: torch.div(a, 0.7, rounding_mode="floor"), (randn(10),)),
    ("div_trunc_float", lambda s, a: torch.div(a, 0.7, rounding_mode="trunc"), (randn(10),)),
    ("floordiv_op", lambda s, a: a // 4, (randint(-20, 20, 10),)),
    ("remainder", lambda s, a: torch.remainder(a, 3), (randint(-9, 9, 10),)),
    ("remainder_float", lambda s, a: torch.remainder(a, -0.75), (randn(10),)),
    ("fmod", lambda s, a: torch.fmod(a, 3), (randint(-9, 9, 10),)),
    ("pow_scalar", lambda s, a: a ** 3, (randn(5),)),
    ("pow_square", lambda s, a: a ** 2, (randn(5),)),
    ("pow_tensor", lambda s, a, b: a.abs() ** b, (randn(5), randn(5))),
    ("pow_scalar_base", lambda s, a: 2 ** a, (randn(5),)),
    ("int_pow_float", lambda s, a: a ** 0.5, (randint(0, 9, 5),)),
    ("unary_math", lambda s, a: torch.exp(a) + torch.log(a.abs() + 1) + torch.sqrt(a.abs()) + torch.rsqrt(a.abs() + 1)
     + torch.sin(a) + torch.cos(a) + torch.abs(a) + torch.neg(a) + torch.reciprocal(a + 10) + torch.erf(a)
     + torch.floor(a) + torch.ceil(a) + torch.sign(a) + torch.round(a) + torch.trunc(a) + torch.log1p(a.abs())
     + torch.expm1(a) + torch.log2(a.abs() + 1) + torch.tanh(a) + torch.sigmoid(a), (randn(4, 5),)),
    ("exp_of_int", lambda s, a: torch.exp(a), (randint(0, 4, 5),)),
    ("max_min", lambda s, a, b: torch.maximum(a, b) - torch.minimum(a, b), (randn(3, 4), randn(4))),
    ("compare", lambda s, a, b: ((a == b) | (a != 0) & (a < b)) ^ ((a <= 0.5) & (a > -1) | (a >= b)),
     (randn(3, 4), randn(4))),
    ("compare_int_float", lambda s, a: a < 2.5, (randint(0, 5, 6),)),
    ("logical", lambda s, a, b: torch.logical_and(a, b) | torch.logical_or(a, ~b) ^ torch.logical_xor(a, b)
     | torch.logical_not(a), (randn(6) > 0, randn(6) > 0)),
    ("logical_on_floats", lambda s, a, b: torch.logical_and(a, b), (randn(6), torch.tensor([0., 1., 0., 2., 0., 3.]))),
    ("bitwise_bool_and_int_not", lambda s, a, b: ((a > 0) & (b > 0) | (a > 3) ^ (b > 3)) + ~a,
     (randint(0, 16, 6), randint(0, 16, 6))),
    ("where", lambda s, a, b: torch.where(a > 0, a, b), (randn(3, 4), randn(4))),
    ("where_scalar", lambda s, a: torch.where(a > 0, a, 0.0), (randn(3, 4),)),
    ("where_int_float", lambda s, a, b: torch.where(b > 0, a, 1.5), (randint(0, 5, 6), randn(6))),
    ("masked_fill", lambda s, a: a.masked_fill(a < 0, -1e9), (randn(3, 4),)),
    ("clamp", lambda s, a: a.clamp(-0.5, 0.5) + a.clamp(min=0) + a.clamp(max=0.1), (randn(10),)),
    ("clamp_tensor", lambda s, a, lo: torch.clamp(a, min=lo), (randn(3, 4), randn(4))),
    ("clamp_int_float", lambda s, a: a.clamp(0.5, 3.5), (randint(0, 5, 6),)),
    ("isnan_isinf", lambda s, a: torch.isnan(a) | torch.isinf(a),
     (torch.tensor([0., float("nan"), float("inf"), -float("inf"), 1.]),)),
    ("to_dtype", lambda s, a: a.to(torch.int32) + a.long() + a.double().float().half().float(), (randn(5) * 5,)),
]

ACTIVATIONS = [
    ("relu", lambda s, a: F.relu(a), (randn(10),)),
    ("gelu_erf", lambda s, a: F.gelu(a), (randn(10),)),
    ("gelu_tanh", lambda s, a: F.gelu(a, approximate="tanh"), (randn(10),)),
    ("silu", lambda s, a: F.silu(a), (randn(10),)),
    ("hardswish", lambda s, a: F.hardswish(a * 4), (randn(10),)),
    ("hardsigmoid", lambda s, a: F.hardsigmoid(a * 4), (randn(10),)),
    ("leaky_relu", lambda s, a: F.leaky_relu(a, 0.2), (randn(10),)),
    ("hardtanh", lambda s, a: F.hardtanh(a, -0.3, 0.4) + F.relu6(a * 8), (randn(10),)),
    ("elu", lambda s, a: F.elu(a, 0.7) + F.selu(a) + F.celu(a), (randn(10),)),
    ("softplus", lambda s, a: F.softplus(a * 10) + F.softplus(a, beta=2, threshold=5), (randn(10),)),
    ("mish", lambda s, a: F.mish(a), (randn(10),)),
    ("prelu", lambda s, a: F.prelu(a, torch.tensor([0.1, 0.2, 0.3])), (randn(2, 3, 4),)),
    ("softmax", lambda s, a: F.softmax(a, -1) + F.softmax(a, 1) + F.log_softmax(a, 0), (randn(3, 4, 5),)),
    ("logsigmoid", lambda s, a: F.logsigmoid(a), (randn(10),)),
]

REDUCTIONS = [
    ("sum_mean", lambda s, a: a.sum() + a.sum(1).sum() + a.mean((0, 2), keepdim=True).sum() + a.mean(),
     (randn(2, 3, 4),)),
    ("sum_int_bool", lambda s, a: (a > 0).sum(-1) + a.long().sum(), (randn(3, 4),)),
    ("amax_amin", lambda s, a: a.amax(-1) - a.amin((0, 2), keepdim=True).squeeze(-1), (randn(2, 3, 4),)),
    ("max_dim", lambda s, a: a.max(dim=1)[0] + a.min(dim=1, keepdim=True).values.squeeze(1), (randn(3, 4),)),
    ("max_dim_indices", lambda s, a: a.max(dim=1)[1], (randn(3, 4),)),
    ("argmax", lambda s, a: a.argmax(-1) + a.argmin(1, keepdim=True) + a.argmax(), (randn(3, 4),)),
    ("var_std", lambda s, a: a.var(-1) + a.var((0, 1), unbiased=False, keepdim=True).sum() + a.std(),
     (randn(3, 4, 5),)),
    ("prod", lambda s, a: a.prod(1), (randn(3, 4),)),
    ("any_all", lambda s, a: a.gt(0).any(-1) | a.gt(-1).all(-1), (randn(3, 4),)),
    ("norm", lambda s, a: torch.linalg.vector_norm(a, dim=-1) + a.norm(p=1, dim=-1), (randn(3, 4),)),
    ("logsumexp", lambda s, a: torch.logsumexp(a, -1), (randn(3, 4),)),
]

FACTORIES = [
    ("arange", lambda s, a: a + torch.arange(4) + torch.arange(1, 9, 2, dtype=torch.float32), (randn(3, 4),)),
    ("full_zeros_ones", lambda s, a: a + torch.zeros(4) + torch.ones(3, 1) + torch.full((4,), 2.5), (randn(3, 4),)),
    ("like", lambda s, a: torch.zeros_like(a) + torch.ones_like(a) * 2 + torch.full_like(a, 3)
     + torch.empty_like(a).shape[0],
     (randn(3, 4),)),
    ("new_full", lambda s, a: a.new_zeros(3, 4) + a.new_ones(4) + a.new_full((1, 4), 7.0), (randn(3, 4),)),
    ("scalar_tensor", lambda s, a: a + torch.tensor(2.0) + torch.tensor([1.0, 2.0, 3.0, 4.0]), (randn(3, 4),)),
    ("tril_triu", lambda s, a: torch.tril(a) + torch.triu(a, 1) + torch.tril(torch.ones(4, 4), -1), (randn(4, 4),)),
    ("dropout", lambda s, a: F.dropout(a, 0.5, training=False) + nn.functional.alpha_dropout(a, 0.1), (randn(3, 4),)),
    ("clone_contiguous", lambda s, a: a.t().contiguous().clone().detach(), (randn(3, 4),)),
]

SHAPES = [
    ("view_reshape", lambda s, a: a.view(2, 12).reshape(4, -1, 2).flatten(), (randn(2, 3, 4),)),
    ("flatten_middle", lambda s, a: a.flatten(1, 2) + 0, (randn(2, 3, 4, 5),)),
    ("permute_transpose_t", lambda s, a: a.permute(2, 0, 1).transpose(0, 2).sum(0).t(), (randn(2, 3, 4),)),
    ("expand", lambda s, a: a.expand(2, 3, 4) + a.expand(3, -1).unsqueeze(0), (randn(3, 1),)),
    ("expand_as", lambda s, a, b: a.expand_as(b) + b, (randn(3, 1), randn(3, 4))),
    ("cat_stack", lambda s, a, b: torch.cat([a, b, a], 1).sum() + torch.stack([a, a], -1), (randn(3, 4), randn(3, 2))),
    ("cat_promotes", lambda s, a, b: torch.cat([a, b]), (randint(0, 5, 3), randn(2))),
    ("split", lambda s, a: sum(t.sum(-1) for t in a.split(3, -1)) + a.split([1, 4, 2], -1)[1].sum(-1), (randn(2, 7),)),
    ("chunk_unbind", lambda s, a: a.chunk(2, 0)[1].sum(0) + sum(a.unbind(0))[:3], (randn(4, 3),)),
    ("slice", lambda s, a: a[1:, ::2] + a[:-1, 1:3:1].sum(), (randn(4, 6),)),
    ("slice_negative", lambda s, a: a[-3:-1, -2:], (randn(4, 6),)),
    ("select", lambda s, a: a[1] + a[:, -1].sum() + a[-1, 2], (randn(4, 6),)),
    ("index_tensor", lambda s, a, i: a[i] + a[:, i].sum(), (randn(5, 5), torch.tensor([0, 3, -1, 4, 2]))),
    ("index_2d", lambda s, a, i, j: a[:, i, j], (randn(2, 4, 5), torch.tensor([0, 3, 1]), torch.tensor([4, 0, 2]))),
    ("index_select", lambda s, a, i: a.index_select(1, i), (randn(3, 5), torch.tensor([4, 0]))),
    ("squeeze_unsqueeze", lambda s, a: a.squeeze() + a.squeeze(1).unsqueeze(-1).squeeze(-1)
     + a.unsqueeze(0).squeeze(0).sum(),
     (randn(3, 1, 4),)),
    ("pad", lambda s, a: F.pad(a, (1, 2)) + 0, (randn(2, 3, 4),)),
    ("pad_2d_value", lambda s, a: F.pad(a, (1, 0, 2, 1), value=0.5), (randn(1, 2, 3, 3),)),
    ("pad_negative", lambda s, a: F.pad(a, (-1, 1)), (randn(2, 5),)),
    ("pad_reflect_replicate", lambda s, a: F.pad(a, (2, 1, 1, 1), mode="reflect")
     + F.pad(a, (2, 1, 1, 1), mode="replicate"),
     (randn(1, 2, 4, 5),)),
    ("flip_roll", lambda s, a: a.flip(-1) + a.roll(2, 1) + a.roll(1), (randn(3, 4),)),
    ("repeat", lambda s, a: a.repeat(2, 1, 3), (randn(2, 3),)),
    ("embedding", lambda s, i: F.embedding(i, torch.arange(20.).view(10, 2)), (randint(0, 10, 2, 3),)),
]


class Group(nn.Module):
    """Many cases in one module (one torch.export per group keeps the suite fast)."""

    def __init__(self, cases):
        super().__init__()
        self.fns = [fn for _, fn, _ in cases]
        self.arity = [len(inputs) for _, _, inputs in cases]

    def forward(self, *args):
        outs, k = [], 0
        for fn, n in zip(self.fns, self.arity):
            out = fn(self, *args[k:k + n])
            outs.extend(out if isinstance(out, (tuple, list)) else [out])
            k += n
        return tuple(outs)


def check_group(cases):
    """All cases through one export; on failure, each case alone to name the culprits."""
    try:
        check(None, *[a for _, _, inputs in cases for a in inputs], module=Group(cases))
        return
    except Exception as exc:  # find which cases fail, and say why
        group_error = f"{type(exc).__name__}: {exc}"
    failures = []
    for name, fn, inputs in cases:
        try:
            check(fn, *inputs)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:500]}")
    pytest.fail("\n".join(failures) or f"only the grouped module fails: {group_error}")


GROUPS = {"elementwise": ELEMENTWISE, "activations": ACTIVATIONS, "reductions": REDUCTIONS,
          "factories": FACTORIES, "shapes": SHAPES}


@pytest.mark.parametrize("group", list(GROUPS))
def test_converters(group):
    check_group(GROUPS[group])


def _seeded(make):
    torch.manual_seed(0)
    m = make()
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


# (id, module factory, inputs, ops the graph must contain)
LAYERS = [
    ("conv2d", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1), (randn(1, 4, 9, 9),), ["Conv"]),
    ("conv2d_groups_dilation", lambda: nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, bias=False),
     (randn(2, 4, 7, 7),), ["Conv"]),
    ("conv1d", lambda: nn.Conv1d(3, 5, 4, stride=2, padding=1), (randn(2, 3, 11),), ["Conv"]),
    ("conv3d", lambda: nn.Conv3d(2, 3, 3, padding=1), (randn(1, 2, 4, 5, 6),), ["Conv"]),
    ("conv_transpose2d", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (randn(1, 4, 5, 5),), ["ConvTranspose"]),
    ("conv_transpose1d", lambda: nn.ConvTranspose1d(3, 2, 4, stride=3), (randn(2, 3, 6),), ["ConvTranspose"]),
    ("linear_2d", lambda: nn.Linear(5, 3), (randn(4, 5),), ["Gemm"]),
    ("linear_3d", lambda: nn.Linear(5, 3, bias=False), (randn(2, 4, 5),), ["MatMul"]),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), (randn(2, 3, 4, 4),), ["BatchNormalization"]),
    ("batchnorm1d", lambda: nn.BatchNorm1d(3, affine=False), (randn(4, 3),), ["BatchNormalization"]),
    ("batchnorm_no_running_stats", lambda: nn.BatchNorm2d(3, track_running_stats=False), (randn(2, 3, 4, 4),), []),
    ("instancenorm", lambda: nn.InstanceNorm2d(3, affine=True), (randn(2, 3, 4, 4),), []),
    ("layernorm", lambda: nn.LayerNorm(6), (randn(2, 3, 6),), ["LayerNormalization"]),
    ("layernorm_2d_no_affine", lambda: nn.LayerNorm((3, 6), elementwise_affine=False), (randn(2, 3, 6),),
     ["LayerNormalization"]),
    ("groupnorm", lambda: nn.GroupNorm(2, 6), (randn(2, 6, 4, 3),), ["InstanceNormalization"]),
    ("groupnorm_1d", lambda: nn.GroupNorm(3, 6, affine=False), (randn(2, 6, 5),), ["InstanceNormalization"]),
    ("maxpool2d", lambda: nn.MaxPool2d(3, 2, 1), (randn(1, 2, 7, 7),), ["MaxPool"]),
    ("maxpool2d_ceil", lambda: nn.MaxPool2d(2, 2, ceil_mode=True), (randn(1, 2, 7, 7),), ["MaxPool"]),
    ("maxpool2d_dilation", lambda: nn.MaxPool2d(3, 1, 1, dilation=2), (randn(1, 2, 7, 7),), ["MaxPool"]),
    ("maxpool1d", lambda: nn.MaxPool1d(2), (randn(1, 2, 8),), ["MaxPool"]),
    ("avgpool2d", lambda: nn.AvgPool2d(3, 2, 1), (randn(1, 2, 7, 7),), ["AveragePool"]),
    ("avgpool2d_exclude_pad", lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False), (randn(1, 2, 5, 5),),
     ["AveragePool"]),
    ("adaptive_avg_1", lambda: nn.AdaptiveAvgPool2d(1), (randn(2, 3, 5, 7),), ["GlobalAveragePool"]),
    ("adaptive_avg_1d", lambda: nn.AdaptiveAvgPool1d(2), (randn(2, 3, 6),), ["AveragePool"]),
    ("hardswish_hardsigmoid", lambda: nn.Sequential(nn.Hardswish(), nn.Hardsigmoid()), (randn(2, 3) * 4,),
     ["HardSwish", "HardSigmoid"]),
    ("adaptive_avg_divisible", lambda: nn.AdaptiveAvgPool2d((2, 3)), (randn(2, 3, 4, 9),), ["AveragePool"]),
    ("adaptive_max", lambda: nn.AdaptiveMaxPool2d((2, 2)), (randn(2, 3, 4, 4),), ["MaxPool"]),
    ("upsample_nearest", lambda: nn.Upsample(scale_factor=2), (randn(1, 2, 3, 4),), ["Resize"]),
    ("upsample_nearest_size", lambda: nn.Upsample(size=(5, 7)), (randn(1, 2, 3, 4),), ["Resize"]),
    ("upsample_bilinear", lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (randn(1, 2, 3, 4),), ["Resize"]),
    ("upsample_bilinear_align", lambda: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True),
     (randn(1, 2, 3, 4),), ["Resize"]),
    ("embedding", lambda: nn.Embedding(10, 4, padding_idx=0), (randint(0, 10, 2, 5),), ["Gather"]),
    ("pixel_shuffle", lambda: nn.PixelShuffle(2), (randn(1, 8, 3, 3),), []),
    ("multihead_attention", lambda: _MHA(), (randn(2, 5, 8),), ["Softmax"]),
]


class _MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class Layers(nn.Module):
    def __init__(self, cases):
        super().__init__()
        self.layers = nn.ModuleList([_seeded(make) for _, make, _, _ in cases])
        self.arity = [len(inputs) for _, _, inputs, _ in cases]

    def forward(self, *args):
        outs, k = [], 0
        for layer, n in zip(self.layers, self.arity):
            outs.append(layer(*args[k:k + n]))
            k += n
        return tuple(outs)


def test_layers():
    inputs = [a for _, _, ins, _ in LAYERS for a in ins]
    try:
        g = check(None, *inputs, module=Layers(LAYERS).eval())
    except Exception:
        failures = []
        for name, make, ins, _ in LAYERS:
            try:
                check(None, *ins, module=_seeded(make))
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:500]}")
        pytest.fail("\n".join(failures))
    kinds = set(ops(g))
    for name, _, _, want in LAYERS:
        assert set(want) <= kinds, name


def test_layer_structure():
    """Each layer maps to its ONNX op; adaptive pooling to 1x1 is a global pool (or a mean)."""
    g = check(None, randn(2, 3, 4, 7), module=_seeded(lambda: nn.AdaptiveAvgPool2d((2, 7))))
    assert "AveragePool" in ops(g)
    g = check(None, randn(2, 6, 4, 3), module=_seeded(lambda: nn.GroupNorm(2, 6)))
    assert ops(g).count("InstanceNormalization") == 1 and "GroupNormalization" not in ops(g)


def test_empty_like_is_zeros_of_the_same_type():
    g = load_module(Fn(lambda s, a: torch.empty_like(a, dtype=torch.int32)).eval(), (randn(3, 4),))
    (out,) = run_reference(g, {g.inputs[0].name: np.zeros((3, 4), np.float32)})
    assert out.dtype == np.int32 and out.shape == (3, 4)


def test_bitwise_ops_on_integers_are_unsupported_at_opset_17():
    from graphopt.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="opset 18"):
        load_module(Fn(lambda s, a: a & 3).eval(), (randint(0, 9, 4),))


def test_adaptive_pool_that_does_not_divide_is_unsupported():
    from graphopt.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="adaptive pooling"):
        load_module(nn.AdaptiveMaxPool2d((3, 3)).eval(), (randn(1, 2, 5, 5),))


MATMULS = [
    ("mm_bmm", lambda s, a, b: torch.mm(a[0], b[0]) + torch.bmm(a, b).sum(0), (randn(2, 3, 4), randn(2, 4, 5))),
    ("matmul_broadcast", lambda s, a, b: a @ b, (randn(2, 1, 3, 4), randn(5, 4, 2))),
    ("matmul_vec", lambda s, a, b: a @ b[0] + (b[0] @ a.transpose(-1, -2)).sum(), (randn(3, 4), randn(2, 4))),
    ("addmm_alpha_beta", lambda s, c, a, b: torch.addmm(c, a, b, beta=0.5, alpha=2),
     (randn(5), randn(3, 4), randn(4, 5))),
    ("baddbmm", lambda s, c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2),
     (randn(2, 3, 5), randn(2, 3, 4), randn(2, 4, 5))),
    ("einsum", lambda s, a, b: torch.einsum("bij,bjk->bik", a, b), (randn(2, 3, 4), randn(2, 4, 5))),
]


def test_matmul_family():
    check_group(MATMULS)


ATTENTION = [
    ("plain", {}, None),
    ("causal", {"is_causal": True}, None),
    ("scale", {"scale": 0.3}, None),
    ("bool_mask", {}, torch.tensor([[True, False, True, True, True]] * 5)),
    ("float_mask", {}, randn(5, 5)),
]


@pytest.mark.parametrize("kwargs,mask", [pytest.param(k, m, id=i) for i, k, m in ATTENTION])
def test_scaled_dot_product_attention(kwargs, mask):
    q, k, v = randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3)
    if mask is None:
        g = check(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs), q, k, v)
    else:
        g = check(lambda s, q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, **kwargs), q, k, v, mask)
    assert ops(g).count("MatMul") == 2 and "Softmax" in ops(g)


def test_sdpa_grouped_query():
    q, k, v = randn(1, 4, 3, 4), randn(1, 2, 3, 4), randn(1, 2, 3, 4)
    check(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), q, k, v)


# dynamic dims: shape arithmetic on SymInts must keep working at other sizes
B, T = Dim("batch"), Dim("seq")
DYNAMIC = [
    ("view_sym", lambda s, a: a.view(a.shape[0], -1) + a.reshape(a.size(0) * a.size(1), 4).view(a.shape[0], -1),
     (randn(2, 3, 4),), {0: B}, "batch"),
    ("view_merge", lambda s, a: a.reshape(-1, a.shape[-1]).sum(-1), (randn(2, 3, 4),), {0: B, 1: T}, None),
    ("arange_seq", lambda s, a: a + torch.arange(a.shape[1]).float(), (randn(2, 5),), {0: B, 1: T}, "batch"),
    ("zeros_sym", lambda s, a: a + torch.zeros(a.shape[0], 1) + torch.full((a.shape[0], a.shape[1]), 2.0),
     (randn(2, 5),), {0: B, 1: T}, "batch"),
    ("expand_sym", lambda s, a, b: a.expand(b.shape[0], -1) + b, (randn(1, 4), randn(3, 4)), ({}, {0: B}), "batch"),
    ("slice_sym", lambda s, a: a[:, : a.shape[1] // 2] + a[:, a.shape[1] - a.shape[1] // 2:], (randn(2, 6),),
     {1: 2 * Dim("half")}, None),
    ("mean_var_dynamic", lambda s, a: a.mean(0) + a.var(0) + a.std(0, unbiased=False), (randn(3, 4),), {0: B}, None),
    ("causal_dynamic", lambda s, q: F.scaled_dot_product_attention(q, q, q, is_causal=True), (randn(2, 1, 5, 4),),
     {0: B, 2: T}, "batch"),
    ("tril_dynamic", lambda s, a: torch.tril(a) + torch.triu(a, 1) * 2, (randn(2, 5, 5),), {1: T, 2: T}, None),
    ("split_sym", lambda s, a: torch.cat([t * i for i, t in enumerate(a.split([a.shape[0] - 1, 1]))]), (randn(4, 3),),
     {0: Dim("batch", min=3)}, "batch"),
    ("sym_floordiv_mod_max", lambda s, a: a.reshape(-1)[: (a.shape[0] * a.shape[1]) // 2 + a.shape[1] % 3].sum()
     + torch.full((torch.sym_max(a.shape[0], 3),), 1.0).sum(), (randn(4, 6),),
     {0: Dim("rows", min=2), 1: Dim("cols", min=3)}, "rows"),
    ("flatten_dynamic", lambda s, a: a.flatten(1) + 0, (randn(2, 3, 4),), {0: B, 2: T}, "batch"),
    ("embedding_positions", lambda s, i: F.embedding(torch.arange(i.shape[1]).expand(i.shape[0], -1) + i,
                                                   torch.arange(40.).view(20, 2)),
     (randint(0, 5, 2, 4),), {0: B, 1: Dim("pos", max=15)}, "batch"),
]


@pytest.mark.parametrize("fn,inputs,spec,first", [pytest.param(*c[1:], id=c[0]) for c in DYNAMIC])
def test_dynamic_dims(fn, inputs, spec, first):
    spec = spec if isinstance(spec, tuple) else (spec,)
    bigger = []
    for a, sp in zip(inputs, spec):
        shape = list(a.shape)
        for axis in sp:
            shape[axis] += 2
        bigger.append(torch.from_numpy(rng.integers(0, 5, shape)) if a.dtype == torch.int64 else randn(*shape))
    g = check(fn, *inputs, dynamic_shapes={"args": spec}, feeds_for=[tuple(bigger)])
    if first is not None:
        assert first in [d for v in g.inputs for d in v.shape]
