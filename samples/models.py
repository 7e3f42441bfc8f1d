"""Sample models for graphopt, defined in code with deterministic random weights.

Every builder returns ``Sample(module, inputs)`` -- a named tuple, so
``module, inputs = resnet_style()`` works -- with the module in eval mode and
``inputs`` a tuple of example tensors (batch 2 unless ``batch=`` says otherwise).
BatchNorm layers get non-trivial statistics (running mean/var measured on random
data, random weight/bias) and LayerNorms random weight/bias, so that folding
passes have real work to do.

    SAMPLES                 the small models the tests export (name -> builder)
    BENCHMARKS              resnet50, bert_base: full-size, for GPU benchmarks
    export_onnx(...)        torch.onnx.export with our conventions (see its docstring)
    example_inputs(name, b) example inputs of batch b for any builder by name
    load_graph(name, ...)   a sample as a graphopt Graph (exported once per process), optionally optimized

As a script, writes DIR/<name>.onnx for each named model (all of SAMPLES by default)::

    python samples/models.py --out DIR [names...]

Exporter: the TorchScript exporter (``dynamo=False``), with
``training=TrainingMode.PRESERVE`` on the eval-mode module.  It gives the classic
PyTorch graph (Shape/Gather/Unsqueeze/Concat/Reshape chains for a dynamic batch),
and PRESERVE skips the exporter's eval "peephole" that would otherwise fold every
BatchNorm into its Conv before we ever see it.  The dynamo exporter starts at opset
18 (opset 17 comes from a version conversion), folds BatchNorm away as well and
emits mostly static Reshapes.
"""
from __future__ import annotations

import argparse
import collections
import functools
import io
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

__all__ = [
    "Sample", "SAMPLES", "BENCHMARKS", "BUILDERS", "export_onnx", "example_inputs", "load_graph", "op_histogram",
    "mnist_convnet", "vgg_style", "resnet_style", "resnet50", "mobilenet_v2_style", "bert_style", "bert_base",
    "gpt_style_block",
]


class Sample(NamedTuple):
    """What a builder returns: the eval-mode module and a tuple of example inputs."""

    module: nn.Module
    inputs: tuple

    def eval(self) -> nn.Module:
        """The module in eval mode (lets ``builder().eval()`` hand back the module, as
        benchmarks/bench_cuda.py does)."""
        return self.module.eval()


# -- helpers ---------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(batch: int, channels: int, size: int, seed: int = 1) -> tuple:
    return (torch.randn(batch, channels, size, size, generator=_gen(seed)),)


def _randomize_norms(module: nn.Module) -> None:
    """Non-trivial affine parameters for every BatchNorm/LayerNorm (torch.manual_seed already set)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5) if isinstance(m, nn.BatchNorm2d) else m.weight.uniform_(0.8, 1.2)
                m.bias.normal_(0.0, 0.1)


@torch.no_grad()
def _calibrate_batchnorm(module: nn.Module, inputs: tuple) -> nn.Module:
    """Set every BatchNorm's running mean/var to the statistics of one train-mode pass
    over ``inputs`` (so eval-mode activations stay O(1) however deep the net), then eval."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one pass, exactly that batch's statistics
    module.train()
    module(*inputs)
    for m in bns:
        m.momentum = 0.1
    return module.eval()


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


# -- MNIST ConvNet ---------------------------------------------------------------------------------


class MnistConvNet(nn.Module):
    input_names = ("input",)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)  # the classic Shape/Gather/Unsqueeze/Concat/Reshape chain
        return self.fc2(torch.relu(self.fc1(x)))


def mnist_convnet(batch: int = 2) -> Sample:
    """conv-relu-maxpool x2, flatten, linear-relu, linear 10; input [N, 1, 28, 28]."""
    torch.manual_seed(0)
    return Sample(MnistConvNet().eval(), _image(batch, 1, 28))


# -- VGG-style -------------------------------------------------------------------------------------


class VGGStyle(nn.Module):
    input_names = ("input",)

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        w = width
        layers, cin = [], 3
        for v in (w, "M", 2 * w, "M", 4 * w, 4 * w, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_conv_bn_relu(cin, v))
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(4 * w * 4 * 4, 8 * w), nn.ReLU(inplace=True),
                                        nn.Linear(8 * w, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg_style(width: int = 16, batch: int = 2) -> Sample:
    """conv3x3+BN+ReLU blocks with max pools, then a Linear classifier; input [N, 3, 32, 32]."""
    torch.manual_seed(0)
    m = VGGStyle(width)
    _randomize_norms(m)
    x = _image(batch, 3, 32)
    return Sample(_calibrate_batchnorm(m, _image(8, 3, 32, seed=100)), x)


# -- ResNet-style and ResNet-50 --------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    input_names = ("input",)

    def __init__(self, block, blocks, width: int = 64, num_classes: int = 1000, imagenet_stem: bool = True):
        super().__init__()
        if imagenet_stem:  # 7x7/2 conv + 3x3/2 max pool, for 224x224
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:  # CIFAR-style 3x3/1 conv, for 32x32
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            layer = []
            for j in range(n):
                layer.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet_style(width: int = 16, blocks: tuple = (1, 1, 1), batch: int = 2) -> Sample:
    """Stem conv+BN+ReLU, BasicBlocks (residual add; 1x1/2 conv+BN downsample), global
    average pool, flatten, Linear; input [N, 3, 32, 32]."""
    torch.manual_seed(0)
    m = ResNet(BasicBlock, blocks, width, num_classes=10, imagenet_stem=False)
    _randomize_norms(m)
    return Sample(_calibrate_batchnorm(m, _image(8, 3, 32, seed=100)), _image(batch, 3, 32))


def resnet50(batch: int = 2) -> Sample:
    """ResNet-50 (Bottleneck blocks 3, 4, 6, 3; 1000 classes); input [N, 3, 224, 224]. ~25.6M params."""
    torch.manual_seed(0)
    m = ResNet(Bottleneck, (3, 4, 6, 3), 64, num_classes=1000, imagenet_stem=True)
    _randomize_norms(m)
    return Sample(_calibrate_batchnorm(m, _image(2, 3, 224, seed=100)), _image(batch, 3, 224))


# -- MobileNetV2-style -----------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn_relu(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Style(nn.Module):
    input_names = ("input",)
    # (expansion t, channels c, repeats n, first stride s): a shortened CIFAR-sized MobileNetV2
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2))

    def __init__(self, width_mult: float = 0.5, num_classes: int = 10):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(256 * max(1.0, width_mult))
        layers = [_conv_bn_relu(3, cin, 3, 1, act=nn.ReLU6)]
        for t, c, n, s in self.CONFIG:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2_style(width_mult: float = 0.5, batch: int = 2) -> Sample:
    """MobileNetV2-style inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
    projection, residual where shapes allow), ReLU6; input [N, 3, 32, 32]."""
    torch.manual_seed(0)
    m = MobileNetV2Style(width_mult)
    _randomize_norms(m)
    return Sample(_calibrate_batchnorm(m, _image(8, 3, 32, seed=100)), _image(batch, 3, 32))


# -- BERT-style encoder ----------------------------------------------------------------------------


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)  # [b, heads, s, d]

    def forward(self, x, mask_bias):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous()
        ctx = ctx.view(ctx.size(0), ctx.size(1), -1)
        return self.norm(self.output(ctx) + x)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()  # erf form
        self.output = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, mask_bias):
        x = self.attention(x, mask_bias)
        return self.norm(self.output(self.act(self.intermediate(x))) + x)


class BertStyle(nn.Module):
    """Embeddings (word + position + token type 0, LayerNorm) and ``layers`` post-LN encoder
    layers; forward(input_ids [N, S] int64, attention_mask [N, S] 1/0 float or int) ->
    last hidden state [N, S, hidden]."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self, vocab=1000, hidden=64, layers=2, heads=4, intermediate=128, max_positions=512):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, max_positions, dtype=torch.int64), persistent=False)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, intermediate) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        seq = input_ids.size(1)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :seq])
             + self.token_type_embeddings(self.token_type_ids[:, :seq]))  # all type 0, broadcast over N
        x = self.norm(x)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # [N, 1, 1, S]
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def _bert_inputs(batch: int, seq: int, vocab: int) -> tuple:
    ids = torch.randint(0, vocab, (batch, seq), generator=_gen(1), dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if batch > 1:
        mask[1, seq - max(1, seq // 4):] = 0  # the second sequence is padded: the mask matters
    return ids, mask


def bert_style(vocab: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128,
               seq: int = 16, batch: int = 2) -> Sample:
    """A small BERT-style encoder written out by hand; inputs (input_ids int64 [N, seq],
    attention_mask int64 [N, seq]); output the last hidden state [N, seq, hidden]."""
    torch.manual_seed(0)
    m = BertStyle(vocab, hidden, layers, heads, intermediate, max_positions=max(seq, 64))
    _randomize_norms(m)
    return Sample(m.eval(), _bert_inputs(batch, seq, vocab))


def bert_base(seq: int = 128, batch: int = 2) -> Sample:
    """BERT-base configuration (vocab 30522, hidden 768, 12 layers, 12 heads, FFN 3072,
    512 positions) of the same model; ~110M params."""
    torch.manual_seed(0)
    m = BertStyle(30522, 768, 12, 12, 3072, max_positions=512)
    _randomize_norms(m)
    return Sample(m.eval(), _bert_inputs(batch, seq, 30522))


# -- GPT-style decoder block -----------------------------------------------------------------------


class GPTBlock(nn.Module):
    """Pre-LayerNorm decoder block: x + attn(ln1(x)) with a causal mask and a fused qkv
    projection, then x + mlp(ln2(x)) with tanh-approximated GELU; [N, S, hidden] -> same."""

    input_names = ("input",)

    def __init__(self, hidden: int = 64, heads: int = 4, max_seq: int = 64):
        super().__init__()
        self.hidden, self.heads, self.head_dim = hidden, heads, hidden // heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc_out = nn.Linear(4 * hidden, hidden)
        future = torch.triu(torch.ones(max_seq, max_seq, dtype=torch.bool), diagonal=1)
        self.register_buffer("future", future.view(1, 1, max_seq, max_seq), persistent=False)

    def attn(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(self.hidden, dim=2)
        q, k, v = (t.view(b, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.masked_fill(self.future[:, :, :s, :s], -10000.0)  # finite: stays finite in float16
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.proj(y.transpose(1, 2).contiguous().view(b, s, h))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc_out(self.act(self.fc(self.ln2(x))))


def gpt_style_block(hidden: int = 64, heads: int = 4, seq: int = 16, batch: int = 2) -> Sample:
    """One GPT-style decoder block; input hidden states [N, seq, hidden] float32."""
    torch.manual_seed(0)
    m = GPTBlock(hidden, heads, max_seq=max(seq, 64))
    _randomize_norms(m)
    return Sample(m.eval(), (torch.randn(batch, seq, hidden, generator=_gen(1)),))


# -- registry --------------------------------------------------------------------------------------

SAMPLES: dict[str, Callable[..., Sample]] = {
    "mnist_convnet": mnist_convnet,
    "vgg_style": vgg_style,
    "resnet_style": resnet_style,
    "mobilenet_v2_style": mobilenet_v2_style,
    "bert_style": bert_style,
    "gpt_style_block": gpt_style_block,
}
BENCHMARKS: dict[str, Callable[..., Sample]] = {"resnet50": resnet50, "bert_base": bert_base}
BUILDERS: dict[str, Callable[..., Sample]] = {**SAMPLES, **BENCHMARKS}


def example_inputs(name: str, batch: int = 2) -> tuple:
    """Example inputs of batch ``batch`` for the builder ``name`` at its default configuration
    (without building the model)."""
    if name in ("mnist_convnet",):
        return _image(batch, 1, 28)
    if name in ("vgg_style", "resnet_style", "mobilenet_v2_style"):
        return _image(batch, 3, 32)
    if name == "resnet50":
        return _image(batch, 3, 224)
    if name == "bert_style":
        return _bert_inputs(batch, 16, 1000)
    if name == "bert_base":
        return _bert_inputs(batch, 128, 30522)
    if name == "gpt_style_block":
        return (torch.randn(batch, 16, 64, generator=_gen(1)),)
    raise KeyError(f"unknown sample {name!r}; known: {sorted(BUILDERS)}")


# -- ONNX export -----------------------------------------------------------------------------------


def _ir_version_for(opset: int) -> int:
    """The smallest ONNX IR version whose release supports ai.onnx ``opset``."""
    from onnx import helper

    rows = [(r[2], r[1]) for r in helper.VERSION_TABLE]  # (ai.onnx opset, IR version)
    exact = [ir for op, ir in rows if op == opset]
    if exact:
        return min(exact)
    later = [ir for op, ir in rows if op >= opset]
    if not later:
        raise ValueError(f"opset {opset} is newer than this onnx ({helper.VERSION_TABLE[-1][0]}) knows")
    return min(later)


def _resolve(model, example):
    """(module, inputs) from a name, a builder, a Sample / (module, inputs) pair or a module."""
    if isinstance(model, str):
        if model not in BUILDERS:
            raise KeyError(f"unknown sample {model!r}; known: {sorted(BUILDERS)}")
        model = BUILDERS[model]
    if not isinstance(model, (nn.Module, tuple)) and callable(model):
        model = model()
    if isinstance(model, tuple):
        model, built_inputs = model
        example = built_inputs if example is None else example
    if not isinstance(model, nn.Module):
        raise TypeError(f"cannot export {type(model).__name__}: want a sample name, builder, Sample or nn.Module")
    if example is None:
        raise TypeError("exporting a bare nn.Module needs its example inputs: export_onnx(module, inputs, path)")
    if isinstance(example, torch.Tensor):
        example = (example,)
    return model, tuple(example)


def export_onnx(model, *args, opset: int = 17, dynamic_batch: bool = True, input_names=None,
                output_names=None):
    """Export a sample to ONNX; returns the path written.

    Call forms::

        export_onnx(name_or_builder, path, opset=17, dynamic_batch=True)
        export_onnx(module, example_inputs, path, opset=17, dynamic_batch=True)

    ``model`` may be a key of ``BUILDERS`` ("resnet_style", "resnet50", ...), a builder,
    a ``Sample`` / ``(module, inputs)`` pair, or an ``nn.Module`` (then pass its example
    inputs before the path).  Inputs are named "input" (CNNs, the GPT block) or
    "input_ids", "attention_mask" (BERT); the output "output".  With ``dynamic_batch``
    axis 0 of every input and of the output is the symbolic dim "batch".

    TorchScript exporter (dynamo=False), training=PRESERVE so BatchNorm stays a
    BatchNormalization node; weights inside the file; IR version lowered to the
    smallest that supports ``opset`` (onnxruntime reads IR <= 13 only); checked with
    onnx.checker.check_model(full_check=True); written atomically.
    """
    import onnx

    if args and isinstance(args[0], (tuple, list, torch.Tensor)):
        example, args = args[0], args[1:]
    else:
        example = None
    if not args:
        raise TypeError("export_onnx() needs a path")
    path, rest = args[0], args[1:]
    if len(rest) > 2:
        raise TypeError("export_onnx(): too many positional arguments")
    if rest:
        opset = rest[0]
    if len(rest) > 1:
        dynamic_batch = rest[1]

    module, inputs = _resolve(model, example)
    module.eval()
    if input_names is None:
        input_names = list(getattr(module, "input_names", ()))
        if len(input_names) != len(inputs):
            input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    if output_names is None:
        output_names = ["output"]
    dynamic_axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated (it says so, twice), and PRESERVE + constant
        # folding warns about training-mode parameters, which an eval-mode module does not have
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*constant folding.*")
        torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = _ir_version_for(opset)
    proto.producer_name = "graphopt-samples (torch.onnx, TorchScript exporter)"
    onnx.checker.check_model(proto, full_check=True)

    from graphopt.fileutil import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path


@functools.lru_cache(maxsize=None)
def _exported(name: str, opset: int) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return export_onnx(name, Path(d) / f"{name}.onnx", opset=opset).read_bytes()


def load_graph(name: str, *, opset: int = 17, level: int | None = None):
    """The sample ``name`` exported to ONNX (once per process and opset) and loaded as a
    fresh graphopt ``Graph``; optimized at ``level`` when one is given.

    >>> g = load_graph("resnet_style", level=2)   # doctest: +SKIP
    """
    import onnx

    import graphopt

    g = graphopt.load(onnx.load_from_string(_exported(name, opset)))
    return g if level is None else graphopt.optimize(g, level=level)


def op_histogram(model) -> collections.Counter:
    """op_type -> count over the main graph of an onnx ModelProto or .onnx path."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model))
    return collections.Counter(n.op_type for n in model.graph.node)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export the sample models to DIR/<name>.onnx.")
    ap.add_argument("--out", required=True, help="folder for the .onnx files")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--static-batch", action="store_true", help="fixed batch 2 instead of a symbolic batch dim")
    ap.add_argument("names", nargs="*", help=f"models (default: all of SAMPLES; also {', '.join(BENCHMARKS)})")
    args = ap.parse_args(argv)
    names = args.names or list(SAMPLES)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    for name in names:
        path = export_onnx(name, Path(args.out) / f"{name}.onnx", opset=args.opset,
                           dynamic_batch=not args.static_batch)
        hist = op_histogram(path)
        ops = " ".join(f"{op}:{n}" for op, n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"{name}: {sum(hist.values())} nodes  {ops}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
