"""Small float models built by hand, and calibration batches for them (shared by the
quantization tests and tests/plugins/cuda/test_cuda_int8_models.py)."""
import numpy as np

from graphopt.builder import GraphBuilder


def build_convnet(seed: int = 0, opset: int = 17):
    """Conv-Relu-MaxPool-Conv-(+residual)-Relu-Flatten-Gemm: every quantization case in 8 nodes."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("convnet", opset=opset)
    x = b.input("x", ("N", 3, 8, 8))
    h = b.op("Relu", b.op("Conv", x, (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
                          (rng.standard_normal(8) * 0.1).astype(np.float32), pads=[1, 1, 1, 1], name="conv1"))
    h = b.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2], name="pool")
    h2 = b.op("Conv", h, (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), pads=[1, 1, 1, 1],
              name="conv2")
    r = b.op("Relu", b.op("Add", h2, h, name="residual"))
    f = b.op("Flatten", r, name="flatten")
    y = b.op("Gemm", f, (rng.standard_normal((10, 128)) * 0.1).astype(np.float32),
             (rng.standard_normal(10) * 0.1).astype(np.float32), transB=1, name="fc")
    b.output(y, "y")
    return b.graph


def batches(shape=(4, 3, 8, 8), n=6, seed=1, name="x"):
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
