"""The CUDA lowerings, one module per kernel family, all registered into one
registry (``registry.LOWERINGS``) by importing this package.

``FAMILIES`` is the one list the backend loads; a new family is a module here
that registers its ops with ``@lowering`` and one entry below. Families share
``common.py`` (dtype checks, copies, expression kernels, window geometry) and
never import the partitioner (``lower.py``), which imports them.

>>> from graphopt.plugins.cuda.lowerings import LOWERINGS
>>> ("", "MatMul") in LOWERINGS and ("ai.graphopt", "FusedRowReduce") in LOWERINGS
True
"""
from __future__ import annotations

import importlib

from .registry import LOWERINGS, Lowering, domain_of, find_lowering, lowering, static_shape

FAMILIES = (
    "elementwise",  # elementwise ops, FusedElementwise, BatchNormalization
    "copies",  # Transpose, Expand, Slice, Concat, Split, Pad, DepthToSpace, SpaceToDepth
    "indexing",  # Gather, GatherElements, GatherND, ScatterElements, ScatterND, OneHot, Tile, Trilu, EyeLike
    "scan",  # CumSum, CumProd, ArgMax, ArgMin, TopK
    "einsum",  # Einsum
    "matmul",  # MatMul, Gemm, FusedMatMul, FusedGemm
    "conv",  # Conv, FusedConv (NCHW, NHWC, depthwise, pointwise), ConvTranspose
    "pool",  # MaxPool, AveragePool, global pools
    "reduce",  # Reduce*, Softmax, LogSoftmax, LayerNormalization, LRN
    "rowfused",  # FusedRowReduce
    "attention",  # Attention
    "resize",  # Resize, Upsample
    "quant",  # QConv, QGemm, QMatMul, QAdd, QuantizeLinear, DequantizeLinear
)

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["FAMILIES", "LOWERINGS", "Lowering", "domain_of", "find_lowering", "lowering", "static_shape"]
