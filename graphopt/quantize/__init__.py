"""Quantization and mixed precision.

* ``quantize_static``: post-training int8 (QDQ) with streaming calibration
  (``minmax``, ``percentile``, ``entropy``, ``mse``), per-layer diagnostics and an
  accuracy budget that sends the most sensitive layers back to float.
* ``quantize_dynamic``: int8 weights, activations quantized at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``).
* ``lower_int8``: QDQ patterns -> graphopt's fused int8 ops (``QConv``, ``QGemm``,
  ``QMatMul``, ``QAdd``), exact on the CPU reference.
* ``convert_float16`` / ``convert_bfloat16``: mixed precision with float32 islands.

>>> from graphopt.quantize import quantize_static, lower_int8           # doctest: +SKIP
>>> qg, report = quantize_static("m.onnx", batches, return_report=True)  # doctest: +SKIP
"""
from .api import QuantizationReport, lower_int8, quantize_static
from .calibration import HistogramObserver, MinMaxObserver, qparams
from .diagnostics import LayerError, format_table, sqnr_db
from .dynamic import quantize_dynamic
from .mixed_precision import DEFAULT_BLOCKLIST, convert_bfloat16, convert_float16, convert_precision

__all__ = ["quantize_static", "quantize_dynamic", "lower_int8", "QuantizationReport", "HistogramObserver",
           "MinMaxObserver", "qparams", "LayerError", "format_table", "sqnr_db", "convert_float16",
           "convert_bfloat16", "convert_precision", "DEFAULT_BLOCKLIST"]
