"""Frontends that turn framework models into graphopt IR.

* ``torch_export``: an ``nn.Module`` through ``torch.export`` and the ATen
  converter table (``aten_table``, filled by ``aten_math``, ``aten_shape``,
  ``aten_nn``), straight into opset-17 IR.
* ``torch_onnx``: the fallback, ``torch.onnx.export`` to ONNX bytes that
  ``graphopt.onnx_io`` imports (``graphopt.load(module, ..., via="onnx")``).

Nothing here is imported by ``import graphopt``: torch loads only when a module
is loaded.
"""
