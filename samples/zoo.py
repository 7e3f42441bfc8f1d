"""The model zoo: real model families, built from their configs with random weights.

Nothing here downloads weights. Every family is built from its library's config
class (transformers) or model factory (timm) and given random weights that look
trained: non-zero biases, norm weights away from 1 and biases away from 0, and
BatchNorm running statistics measured on random data (``samples/models.py``'s
helpers). One place builds them for the tests and benchmarks of every issue::

    FAMILIES                       name -> Family (how to build it, what it takes)
    build(name, size="tiny")       -> (nn.Module in eval mode, example_inputs tuple)
    export(name, exporter=...)     -> onnx.ModelProto (cached per process; a fresh copy each call)
    feeds(name, model)             -> {input name: np.ndarray} for an export's inputs
    onnx_zoo(name)                 -> the onnx wheel's light_<name>.onnx with random weights

>>> module, inputs = build("hf_bert")                                  # doctest: +SKIP
>>> proto = export("hf_bert", exporter="dynamo", dynamic=True)         # doctest: +SKIP
>>> outputs = ort_session(proto).run(None, feeds("hf_bert", proto))    # doctest: +SKIP

Sizes: ``"tiny"`` is a few layers at hidden 32-64 on small images and sequences,
so a test exports and runs one in seconds; ``"full"`` is the family's default
config (BERT-base, ViT-B/16, ResNet-18 at 224x224, ...), except the decoder LLMs
(LLaMA, Qwen2, GPT-NeoX), whose defaults have billions of parameters: their
``"full"`` is a GPT-2-base-sized member of the family (hidden 768, 12 layers,
vocabulary 32000; GQA with 4 K/V heads for LLaMA and Qwen2).

Conventions: every module returns one tensor, its first output (last hidden
state, or logits for timm), with ``return_dict=False`` and no KV cache. Text
models take ``input_ids`` and ``attention_mask`` (the second sequence of a batch
padded at the end); Whisper's encoder takes ``input_features``; vision models
``pixel_values``. transformers models use their default attention
(``sdpa``) unless ``attn="eager"`` is asked for.

Exports are cached per process; with ``GRAPHOPT_ZOO_CACHE=<folder>`` in the environment
also on disk there (keyed by the arguments, this file, torch and transformers), so that
benchmark runs over every family export each once.

Exports: ``exporter="torchscript"`` is ``torch.onnx.export(dynamo=False)``,
``"dynamo"`` is ``dynamo=True``, both with their defaults otherwise (what a
user gets); ``dynamic=True`` makes the batch axis (and the sequence axis of
text models) symbolic. A family an exporter cannot export raises
``ZooUnsupported`` with the exporter's one-line reason.

timm imports ``torchvision``; where it is not installed (a real torchvision
beside a CPU torch breaks transformers' vision models), a stand-in with exactly
what timm imports sits in ``sys.modules`` while timm imports, and is removed
again (see ``_import_timm``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import io
import math
import os
import sys
import types
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from samples.models import _calibrate_batchnorm, _ir_version_for, _randomize_norms

__all__ = ["FAMILIES", "Family", "ZooUnsupported", "build", "export", "feeds", "input_names", "onnx_zoo",
           "onnx_zoo_feeds", "ONNX_ZOO", "EXPORTERS", "timm_available"]

EXPORTERS = ("torchscript", "dynamo")
SIZES = ("tiny", "full")


class ZooUnsupported(RuntimeError):
    """A family that an exporter (or this environment) cannot produce; the message is
    one line: the family, the exporter and its reason."""


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build one model family.

    ``make(size, attn)`` returns the bare library model; ``kind`` says what it takes
    ("text", "decoder", "audio", "image", "timm"); ``image`` is the (tiny, full)
    image side, ``mel`` the (tiny, full) mel-bin count and frame count of audio."""

    make: Callable[[str, str | None], nn.Module]
    kind: str
    library: str = "transformers"
    image: tuple[int, int] = (32, 224)
    vocab: tuple[int, int] = (1000, 30522)
    audio: tuple[tuple[int, int], tuple[int, int]] = ((16, 64), (80, 3000))
    causal: bool = False


# -- transformers families -------------------------------------------------------------------------

_TEXT_TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=128)
_DECODER_FULL = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=2048, max_position_embeddings=2048)


def _hf(model_cls: str, config_cls: str, tiny: dict, full: dict | None = None, build_kwargs: dict | None = None):
    """A ``make(size, attn)`` for a transformers model class from its config class:
    ``tiny`` overrides the config's defaults at size "tiny", ``full`` at size "full"."""

    def make(size: str, attn: str | None) -> nn.Module:
        import transformers

        config = getattr(transformers, config_cls)(**(tiny if size == "tiny" else (full or {})))
        cls = getattr(transformers, model_cls) if "." not in model_cls else _import_attr(model_cls)
        kwargs = dict(build_kwargs or {})
        if attn is not None:
            config._attn_implementation = attn
        return cls(config, **kwargs)

    return make


def _import_attr(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)


_VIT_TINY = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128)

_HF_FAMILIES = {
    "hf_bert": Family(_hf("BertModel", "BertConfig", _TEXT_TINY, build_kwargs={"add_pooling_layer": False}),
                      "text"),
    "hf_distilbert": Family(_hf("DistilBertModel", "DistilBertConfig",
                                dict(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                     max_position_embeddings=128)), "text"),
    "hf_roberta": Family(_hf("RobertaModel", "RobertaConfig", {**_TEXT_TINY, "max_position_embeddings": 130},
                             {"vocab_size": 50265, "max_position_embeddings": 514},
                             build_kwargs={"add_pooling_layer": False}), "text", vocab=(1000, 50265)),
    "hf_albert": Family(_hf("AlbertModel", "AlbertConfig", {**_TEXT_TINY, "embedding_size": 32},
                            build_kwargs={"add_pooling_layer": False}), "text", vocab=(1000, 30000)),
    "hf_electra": Family(_hf("ElectraModel", "ElectraConfig", {**_TEXT_TINY, "embedding_size": 32}), "text"),
    "hf_gpt2": Family(_hf("GPT2Model", "GPT2Config", dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2,
                                                          n_head=4, bos_token_id=0, eos_token_id=0)), "decoder", vocab=(1000, 50257), causal=True),
    "hf_gpt_neox": Family(_hf("GPTNeoXModel", "GPTNeoXConfig", {**_TEXT_TINY, "rotary_pct": 0.25},
                              {**_DECODER_FULL, "intermediate_size": 3072, "rotary_pct": 0.25}),
                          "decoder", vocab=(1000, 32000), causal=True),
    "hf_llama": Family(_hf("LlamaModel", "LlamaConfig", {**_TEXT_TINY, "num_key_value_heads": 2},
                           {**_DECODER_FULL, "num_key_value_heads": 4}), "decoder", vocab=(1000, 32000),
                       causal=True),
    "hf_qwen2": Family(_hf("Qwen2Model", "Qwen2Config", {**_TEXT_TINY, "num_key_value_heads": 2},
                           {**_DECODER_FULL, "num_key_value_heads": 4}), "decoder", vocab=(1000, 32000),
                       causal=True),
    "hf_t5_encoder": Family(_hf("T5EncoderModel", "T5Config", dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128,
                                                                   num_layers=2, num_heads=4)),
                            "text", vocab=(1000, 32128)),
    "hf_whisper_encoder": Family(_hf("transformers.models.whisper.modeling_whisper.WhisperEncoder", "WhisperConfig",
                                     dict(num_mel_bins=16, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                          encoder_ffn_dim=128, max_source_positions=32, decoder_layers=1,
                                          decoder_attention_heads=4, decoder_ffn_dim=128)), "audio"),
    "hf_vit": Family(_hf("ViTModel", "ViTConfig", _VIT_TINY, build_kwargs={"add_pooling_layer": False}), "image"),
    "hf_deit": Family(_hf("DeiTModel", "DeiTConfig", _VIT_TINY, build_kwargs={"add_pooling_layer": False}),
                      "image"),
    "hf_swin": Family(_hf("SwinModel", "SwinConfig", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                                                          num_heads=[2, 4], window_size=4),
                          build_kwargs={"add_pooling_layer": False}), "image"),
    "hf_convnext": Family(_hf("ConvNextModel", "ConvNextConfig", dict(image_size=32, hidden_sizes=[16, 24, 32, 64],
                                                                      depths=[1, 1, 1, 1])), "image"),
    "hf_clip_vision": Family(_hf("CLIPVisionModel", "CLIPVisionConfig", {**_VIT_TINY, "projection_dim": 64}),
                             "image"),
    "hf_mobilevit": Family(_hf("MobileViTModel", "MobileViTConfig",
                               dict(image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                                    num_attention_heads=2), build_kwargs={"expand_output": False}),
                           "image", image=(64, 256)),
    "hf_segformer": Family(_hf("SegformerModel", "SegformerConfig",
                               dict(image_size=64, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64],
                                    num_attention_heads=[1, 2, 2, 4], decoder_hidden_size=64)),
                           "image", image=(64, 512)),
}


# -- timm families ---------------------------------------------------------------------------------


def _timm(model_name: str, tiny: dict | None = None):
    """A ``make(size, attn)`` for a timm model: ``tiny`` overrides at size "tiny"
    (10 classes, and e.g. fewer blocks); "full" is the named model as timm defines it."""

    def make(size: str, attn: str | None) -> nn.Module:
        if attn is not None:
            raise ValueError(f"timm models have no attn= choice (got {attn!r})")
        timm = _import_timm()
        kwargs = {"num_classes": 10, **(tiny or {})} if size == "tiny" else {}
        return timm.create_model(model_name, pretrained=False, **kwargs)

    return make


_TIMM_FAMILIES = {
    "timm_resnet18": Family(_timm("resnet18"), "image", "timm", image=(64, 224)),
    "timm_efficientnet_b0": Family(_timm("efficientnet_b0"), "image", "timm", image=(64, 224)),
    "timm_mobilenetv3": Family(_timm("mobilenetv3_small_100"), "image", "timm", image=(64, 224)),
    "timm_convnext": Family(_timm("convnext_atto"), "image", "timm", image=(64, 224)),
    "timm_vit": Family(_timm("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
                       "image", "timm", image=(32, 224)),
}

FAMILIES: dict[str, Family] = {**_HF_FAMILIES, **_TIMM_FAMILIES}


# -- the torchvision stand-in timm needs -----------------------------------------------------------


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: BatchNorm2d with fixed statistics and affine."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class _StandInModule(types.ModuleType):
    """A torchvision submodule of the stand-in: names timm's data pipeline imports
    resolve to callables that refuse to run (image transforms and datasets are not
    part of building or exporting a model)."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def refuse(*_args, **_kwargs):
            raise RuntimeError(f"{self.__name__}.{attr} is not available: torchvision is not installed "
                               "(samples/zoo.py's stand-in provides only what timm's models need)")

        return type(attr, (), {"__init__": refuse, "__call__": refuse, "__module__": self.__name__})


def _torchvision_standin() -> None:
    """Put a stand-in ``torchvision`` in ``sys.modules``: the modules timm imports at
    import time (``ops.misc.FrozenBatchNorm2d``, ``transforms``, ``transforms.functional``
    with ``InterpolationMode``, ``datasets``, ``utils``). ``models.feature_extraction``
    is left out, so timm takes its own "no torchvision FX" path, as it would on an
    old torchvision."""
    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional", "torchvision.datasets", "torchvision.utils"]
    mods = {n: _StandInModule(n) for n in names}
    mods["torchvision"].__version__ = "0.0.0+graphopt-standin"
    mods["torchvision"].__path__ = []  # a package, so "import torchvision.models" fails cleanly
    mods["torchvision.ops"].__path__ = []
    mods["torchvision.transforms"].__path__ = []
    mods["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2d
    mods["torchvision.transforms.functional"].InterpolationMode = _InterpolationMode
    for n, m in mods.items():
        parent, _, child = n.rpartition(".")
        if parent:
            setattr(mods[parent], child, m)
    sys.modules.update(mods)


@functools.lru_cache(maxsize=None)
def _import_timm():
    """timm, imported with the torchvision stand-in in ``sys.modules`` only while it
    imports: timm keeps the names it took, and nothing else (transformers asks
    ``importlib.util.find_spec("torchvision")``) ever sees a torchvision that is not there."""
    standin = False
    try:
        import torchvision  # noqa: F401
    except ImportError:
        _torchvision_standin()
        standin = True
    try:
        import timm
    except ImportError as e:
        raise ZooUnsupported(f"timm is not importable: {e}") from None
    finally:
        if standin:
            for n in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[n]
    return timm


def timm_available() -> bool:
    """True when timm imports (with the torchvision stand-in where needed)."""
    try:
        _import_timm()
    except ZooUnsupported:
        return False
    return True


# -- building --------------------------------------------------------------------------------------


class _TextModel(nn.Module):
    def __init__(self, model: nn.Module, decoder: bool):
        super().__init__()
        self.model, self.extra = model, ({"use_cache": False} if decoder else {})

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False, **self.extra)[0]


class _AudioModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features):
        return self.model(input_features, return_dict=False)[0]


class _ImageModel(nn.Module):
    def __init__(self, model: nn.Module, timm_model: bool):
        super().__init__()
        self.model, self.timm_model = model, timm_model

    def forward(self, pixel_values):
        if self.timm_model:
            return self.model(pixel_values)
        return self.model(pixel_values=pixel_values, return_dict=False)[0]


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown zoo family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _check_size(size: str) -> int:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    return SIZES.index(size)


def input_names(name: str) -> tuple[str, ...]:
    """The input names of a family's module (and of its exports), in order.

    >>> input_names("hf_bert")
    ('input_ids', 'attention_mask')
    """
    kind = _family(name).kind
    return {"text": ("input_ids", "attention_mask"), "decoder": ("input_ids", "attention_mask"),
            "audio": ("input_features",), "image": ("pixel_values",)}[kind]


def _inputs(name: str, size: str, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Example inputs as NumPy arrays by input name (deterministic in ``seed``)."""
    fam, which = _family(name), _check_size(size)
    rng = np.random.default_rng(seed + 1)
    if fam.kind in ("text", "decoder"):
        # ids from 3 up: clear of the pad/special ids (RoBERTa counts positions past its pad id 1)
        ids = rng.integers(3, fam.vocab[which], size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        if batch > 1:
            mask[1, seq - max(1, seq // 4):] = 0  # the second sequence padded at its end: the mask matters
        return {"input_ids": ids, "attention_mask": mask}
    if fam.kind == "audio":
        bins, frames = fam.audio[which]
        return {"input_features": rng.standard_normal((batch, bins, frames), dtype=np.float32)}
    side = fam.image[which]
    return {"pixel_values": rng.standard_normal((batch, 3, side, side), dtype=np.float32)}


def _is_norm(m: nn.Module) -> bool:
    return type(m).__name__.lower().endswith(("norm", "layernorm", "rmsnorm", "norm2d", "normact2d"))


@torch.no_grad()
def _look_trained(module: nn.Module) -> None:
    """Random weights that look trained (the global torch RNG is seeded): norms' affine
    away from 1/0 (``_randomize_norms``, plus the libraries' own RMSNorm/LayerNorm
    classes), and every zero-initialized bias of a Linear/Conv non-zero."""
    _randomize_norms(module)
    covered = {id(m) for m in module.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))}
    for m in module.modules():
        if id(m) in covered:
            continue
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if _is_norm(m) and isinstance(weight, nn.Parameter) and weight.dim() == 1:
            # an RMSNorm stored as (1 + weight) (Gemma-style) or as weight: either way move it off its init
            weight.add_(torch.empty_like(weight).uniform_(-0.2, 0.2))
            if isinstance(bias, nn.Parameter):
                bias.normal_(0.0, 0.1)
        elif isinstance(bias, nn.Parameter) and bias.dim() == 1 and not bias.any():
            bias.normal_(0.0, 0.02)


def build(name: str, *, size: str = "tiny", batch: int = 2, seq: int = 16, seed: int = 0,
          attn: str | None = None) -> tuple[nn.Module, tuple]:
    """The family ``name`` as an eval-mode module returning one tensor, and its example
    inputs (a tuple of tensors, in ``input_names(name)`` order).

    ``attn`` picks transformers' attention implementation ("sdpa", "eager"); None is
    the library's default.

    >>> module, (ids, mask) = build("hf_bert", batch=2, seq=16)      # doctest: +SKIP
    >>> module(ids, mask).shape                                     # doctest: +SKIP
    torch.Size([2, 16, 64])
    """
    fam = _family(name)
    _check_size(size)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fam.make(size, attn)
    _look_trained(model)
    if fam.kind in ("text", "decoder"):
        module = _TextModel(model, decoder=fam.kind == "decoder")
    elif fam.kind == "audio":
        module = _AudioModel(model)
    else:
        module = _ImageModel(model, timm_model=fam.library == "timm")
    if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        calib = _inputs(name, size, 16, seq, seed + 100)  # enough samples per channel at 2x2 maps
        _calibrate_batchnorm(module, tuple(torch.from_numpy(a) for a in calib.values()))
    module.eval()
    example = _inputs(name, size, batch, seq, seed)
    return module, tuple(torch.from_numpy(a) for a in example.values())


# -- export ----------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "During")):
            return f"{type(err).__name__}: {line}"[:300]
    return type(err).__name__


def _export_torchscript(module, example, names, dynamic, opset) -> bytes:
    axes = None
    if dynamic:
        seq_axis = {1: "seq"} if names == ("input_ids", "attention_mask") else {}
        axes = {n: {0: "batch", **seq_axis} for n in names}
        axes["output"] = {0: "batch", **seq_axis}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buf, dynamo=False, opset_version=opset, input_names=list(names),
                          output_names=["output"], dynamic_axes=axes)
    return buf.getvalue()


def _export_dynamo(module, example, names, dynamic, opset) -> bytes:
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch")
        if names == ("input_ids", "attention_mask"):
            seqd = torch.export.Dim("seq")
            shapes = {n: {0: batch, 1: seqd} for n in names}
        else:
            shapes = {n: {0: batch} for n in names}
    # the exporter reports its progress on stdout and logs what it skips; a library call should not
    with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers("torch.onnx", "onnxscript"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, example, dynamo=True, opset_version=opset, input_names=list(names),
                                 output_names=["output"], dynamic_shapes=shapes, verbose=False)
    return prog.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


@functools.lru_cache(maxsize=None)
def _exported(name, exporter, dynamic, opset, size, batch, seq, seed, attn) -> bytes:
    folder = os.environ.get("GRAPHOPT_ZOO_CACHE")
    if not folder:
        return _export_now(name, exporter, dynamic, opset, size, batch, seq, seed, attn)
    path = os.path.join(folder, f"{name}-{exporter}-{'dynamic' if dynamic else 'static'}-{opset}-{size}-b{batch}-"
                                f"s{seq}-r{seed}-{attn}-{_cache_tag()}.onnx")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    data = _export_now(name, exporter, dynamic, opset, size, batch, seq, seed, attn)
    os.makedirs(folder, exist_ok=True)
    from graphopt.fileutil import atomic_write

    with atomic_write(path) as f:
        f.write(data)
    return data


@functools.lru_cache(maxsize=None)
def _cache_tag() -> str:
    """What an export depends on besides its arguments: this file, the weight helpers, torch and
    transformers (an export cached under another tag is never read)."""
    import hashlib

    import transformers

    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for module in (sys.modules[__name__], sys.modules[_calibrate_batchnorm.__module__]):
        with open(module.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _export_now(name, exporter, dynamic, opset, size, batch, seq, seed, attn) -> bytes:
    import onnx

    module, example = build(name, size=size, batch=batch, seq=seq, seed=seed, attn=attn)
    try:
        with torch.no_grad():
            data = _EXPORTERS[exporter](module, example, input_names(name), dynamic, opset)
    except Exception as e:  # noqa: BLE001 -- the exporter's reason is the product here
        raise ZooUnsupported(f"{name}: the {exporter} exporter cannot export it: {_one_line(e)}") from None
    proto = onnx.load_from_string(data)
    opset_now = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    # onnxruntime reads IR <= 13; the smallest IR version for the opset never lacks what the file needs
    proto.ir_version = min(proto.ir_version, max(_ir_version_for(opset_now), 8))
    proto.producer_name = f"graphopt zoo ({exporter} exporter)"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export(name: str, *, exporter: str = "torchscript", dynamic: bool = False, opset: int | None = None,
           size: str = "tiny", batch: int = 2, seq: int = 16, seed: int = 0, attn: str | None = None):
    """The family ``name`` exported to ONNX with one of torch.onnx's exporters; a fresh
    ``onnx.ModelProto`` each call (the export itself is cached per process).

    ``opset`` None takes the exporter's default. Inputs are named as ``input_names(name)``,
    the output "output". Raises ``ZooUnsupported`` with the exporter's reason when it fails.

    >>> proto = export("hf_vit", exporter="dynamo", dynamic=True)    # doctest: +SKIP
    >>> [i.name for i in proto.graph.input]                          # doctest: +SKIP
    ['pixel_values']
    """
    import onnx

    _family(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    return onnx.load_from_string(_exported(name, exporter, bool(dynamic), opset, size, batch, seq, seed, attn))


def feeds(name: str, model=None, *, size: str = "tiny", batch: int = 2, seq: int = 16,
          seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for an export of ``name`` (or for ``build``'s module), keyed by the export's
    input names: the same values ``build(..., seed=seed)`` gives as example inputs.

    >>> proto = export("hf_bert")                                   # doctest: +SKIP
    >>> sorted(feeds("hf_bert", proto))                             # doctest: +SKIP
    ['attention_mask', 'input_ids']
    """
    values = _inputs(name, size, batch, seq, seed)
    if model is None:
        return values
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if all(n in values for n in graph_inputs):
        return {n: values[n] for n in graph_inputs}
    if len(graph_inputs) > len(values):
        raise ValueError(f"{name}: the export takes {graph_inputs}, the family gives {list(values)}")
    return dict(zip(graph_inputs, values.values()))


# -- the onnx wheel's light model zoo --------------------------------------------------------------

ONNX_ZOO = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
            "squeezenet", "vgg19", "zfnet512")


def _light_path(name: str) -> str:
    import onnx

    if name not in ONNX_ZOO:
        raise KeyError(f"unknown onnx zoo model {name!r}; known: {', '.join(ONNX_ZOO)}")
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")


def _weight_for(role: tuple[str, int], shape: tuple[int, ...], rng: np.random.Generator, transposed: bool):
    """Random values of a sane scale for a tensor by what reads it: He-normal conv and
    dense weights, BatchNorm/affine scales near 1, biases and means near 0."""
    op, index = role
    if op == "Conv" and index == 1:
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    if op in ("Gemm", "MatMul") and index == 1:
        fan_in = shape[-1] if transposed else shape[0]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(1.0 / fan_in))
    if (op == "BatchNormalization" and index in (1, 4)) or op == "Mul":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1))


def _calibrate_onnx_batchnorm(proto) -> None:
    """Set every BatchNormalization's mean and variance to the per-channel statistics
    of its input on random data, as a trained net's running statistics are: one
    onnxruntime run of a copy in which each BatchNormalization normalizes by its
    batch's statistics (what torch's train mode does) and reports them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if not bns:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    nodes, stat_names = [], []
    for i, node in enumerate(probe.graph.node):
        if node.op_type != "BatchNormalization":
            nodes.append(node)
            continue
        x, scale, bias = node.input[:3]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        t = [f"_calib{i}_{k}" for k in range(9)]
        nodes += [  # the light files' BatchNormalizations are all 4-D (N, C, H, W)
            helper.make_node("ReduceMean", [x], [t[0]], axes=[0, 2, 3]),
            helper.make_node("Sub", [x, t[0]], [t[1]]),
            helper.make_node("Mul", [t[1], t[1]], [t[2]]),
            helper.make_node("ReduceMean", [t[2]], [t[3]], axes=[0, 2, 3]),
            helper.make_node("Add", [t[3], _scalar_initializer(probe, f"_calib{i}_eps", eps)], [t[4]]),
            helper.make_node("Sqrt", [t[4]], [t[5]]),
            helper.make_node("Div", [t[1], t[5]], [t[6]]),
            helper.make_node("Unsqueeze", [scale], [t[7]], axes=[1, 2]),
            helper.make_node("Unsqueeze", [bias], [t[8]], axes=[1, 2]),
            helper.make_node("Mul", [t[6], t[7]], [f"_calib{i}_y"]),
            helper.make_node("Add", [f"_calib{i}_y", t[8]], [node.output[0]]),
        ]
        stat_names.append((t[0], t[3]))
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    for mean, var in stat_names:
        probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in (mean, var))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    stats = session.run([n for pair in stat_names for n in pair], onnx_zoo_feeds(proto, seed=100))
    inits = {t.name: t for t in proto.graph.initializer}
    for k, node in enumerate(bns):
        for name, value in ((node.input[3], stats[2 * k]), (node.input[4], stats[2 * k + 1])):
            inits[name].CopyFrom(numpy_helper.from_array(value.reshape(-1).astype(np.float32), name))


def _scalar_initializer(proto, name: str, value: float) -> str:
    """Add a float32 scalar initializer ``name`` to ``proto``; returns its name."""
    from onnx import numpy_helper

    proto.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    return name


@functools.lru_cache(maxsize=None)
def _light(name: str, seed: int) -> bytes:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(_light_path(name), load_external_data=False)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list] = {}
    for node in g.node:
        for k, v in enumerate(node.input):
            readers.setdefault(v, []).append((node, k))
    rng = np.random.default_rng(seed)
    keep, shape_inits = [], set()
    for node in g.node:
        # the light files make every weight as ConstantOfShape(<its shape>) filled with 0.02
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        reader, k = readers[node.output[0]][0]
        while reader.op_type == "Unsqueeze" and reader.output[0] in readers:  # a per-channel affine
            reader, k = readers[reader.output[0]][0]
        transposed = any(a.name == "transB" and a.i for a in reader.attribute)
        values = _weight_for((reader.op_type, k), shape, rng, transposed)
        g.initializer.append(numpy_helper.from_array(values, node.output[0]))
        shape_inits.add(node.input[0])
    del g.node[:]
    g.node.extend(keep)
    still_read = {v for n in keep for v in n.input}
    kept = [t for t in g.initializer if t.name not in shape_inits or t.name in still_read]
    del g.initializer[:]
    g.initializer.extend(kept)
    weights = {t.name for t in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in weights and i.name not in shape_inits]
    del g.input[:]
    g.input.extend(graph_inputs)
    proto.ir_version = max(proto.ir_version, 4)  # initializers that are not graph inputs need IR 4
    _calibrate_onnx_batchnorm(proto)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_zoo(name: str, *, seed: int = 0):
    """The onnx wheel's ``light_<name>.onnx`` (``ONNX_ZOO``) with its placeholder weights
    replaced by random initializers of a sane scale; a fresh ModelProto each call.

    >>> proto = onnx_zoo("resnet50")                                # doctest: +SKIP
    >>> [i.name for i in proto.graph.input]                         # doctest: +SKIP
    ['gpu_0/data_0']
    """
    import onnx

    return onnx.load_from_string(_light(name, seed))


def onnx_zoo_feeds(model, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs (standard normal) for an ``onnx_zoo`` model's graph inputs."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for i in model.graph.input:
        dims = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        out[i.name] = rng.standard_normal(dims, dtype=np.float32)
    return out
