"""The roofline model: FLOPs of each matrix kernel family from its spec, the bytes a launch must
move (each tensor once, a gather's table as the rows it reads), the floor as the larger of the
compute and memory times on a named GPU, and the model's figures in the backend's stats."""
import numpy as np
import pytest

from cuda_harness import needs_emu
from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cuda.flash_attention import make_flash_attention
from graphopt.plugins.cuda.gemm import make_matmul
from graphopt.plugins.cuda.lower import lower_graph
from graphopt.plugins.cuda.roofline import GPUS, gemm_floor_us, gpu, matrix_work, model_floor
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul


def test_matrix_work_of_gemm_and_attention_specs():
    assert matrix_work(make_tc_matmul(64, 32, 48, batch=(3,))) == (2.0 * 64 * 32 * 48 * 3, "float16")
    assert matrix_work(make_matmul(5, 7, 9)) == (2.0 * 5 * 7 * 9, "float32")
    full = make_flash_attention((2, 3), 8, 10, 16, 32)
    assert matrix_work(full) == (2.0 * 6 * 8 * 10 * 48, "float16")
    causal = make_flash_attention((1, 1), 4, 6, 16, 16, causal=True, causal_offset=2)
    # rows see 3, 4, 5, 6 keys
    assert matrix_work(causal) == (2.0 * (3 + 4 + 5 + 6) * 32, "float16")


def test_gpu_names_and_refusal():
    assert gpu(None) is GPUS["h100"] and gpu("NVIDIA H200") is GPUS["h200"] and gpu("A100-SXM4-80GB") is GPUS["a100"]
    with pytest.raises(GraphoptError, match="no roofline figures for GPU 'RTX 9090'"):
        gpu("RTX 9090")


def test_floor_is_the_larger_of_compute_and_memory_time():
    # 4096^3 float16: 137.4 GFLOP at 989.4 TFLOP/s is 138.9 us; its 100.7 MB at 3.35 TB/s only 30 us
    assert gemm_floor_us(4096, 4096, 4096, "float16") == pytest.approx(2 * 4096 ** 3 / 989.4e12 * 1e6)
    # a thin one is memory-bound: 2 x 4096 x 4096 float32 weights read once
    assert gemm_floor_us(1, 4096, 4096, "float32", "a100") == pytest.approx(
        4 * (4096 + 4096 * 4096 + 4096) / 2.039e12 * 1e6)


def graph():
    b = GraphBuilder()
    x = b.input("x", (64, 128), "float16")
    table = np.zeros((1000, 128), np.float32)
    ids = b.input("ids", (2, 8), "int64")
    b.output(b.op("Gather", table, ids, axis=0), "emb")  # reads 16 of the 1000 rows
    h = b.op("MatMul", x, np.ones((128, 256), np.float16))
    b.output(b.op("Softmax", h, axis=-1), "p")
    return b.graph


def test_per_launch_flops_bytes_and_bound():
    lowered = lower_graph(graph(), "cuda-emu")
    mf = model_floor(lowered, "h100")
    by_op = {f.op: f for f in mf.floors}
    assert mf.launches == len(lowered.launches) == 3
    mm = by_op["MatMul"]
    assert mm.flops == 2.0 * 64 * 128 * 256 and mm.math == "float16"
    assert mm.bytes == 2 * (64 * 128 + 128 * 256 + 64 * 256)
    assert mm.floor_s == pytest.approx(max(mm.flops / 989.4e12, mm.bytes / 3.35e12))
    g = by_op["Gather"]
    assert g.bytes == 2 * (16 * 128 * 4) + 16 * 8  # the 16 rows it reads, the 16 it writes, the ids
    sm = by_op["Softmax"]
    assert sm.bound == "memory" and sm.bytes == 2 * 2 * 64 * 256
    assert mf.floor_us == pytest.approx(1e6 * sum(f.floor_s for f in mf.floors))
    top = list(mf.per_kernel(1))
    assert len(top) == 1 and top[0].endswith("(MatMul)")


@needs_emu
def test_backend_stats_carry_the_floor_and_the_launch_count():
    exe = get_backend("cuda-emu").compile(graph())
    s = exe.stats
    assert s["roofline"]["launches"] == s["launches"] == 3
    assert s["roofline"]["gpu"].startswith("H100") and s["roofline"]["floor_us"] > 0
    assert len(s["roofline_kernels"]) == 3


def test_the_gpu_benchmark_prints_measured_over_floor():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    import bench_cuda

    note = bench_cuda.floor_note("NVIDIA H100 80GB HBM3", 0.2778, lambda g: gemm_floor_us(4096, 4096, 4096, "float16", g))
    assert note == "roofline floor 138.9 us (NVIDIA H100 80GB HBM3), measured/floor 2.0"
    assert bench_cuda.floor_note("Tesla T4", 1.0, gpu).startswith("no roofline figures for GPU 'Tesla T4'")
    lowered = lower_graph(graph(), "cuda-emu")

    class Exe:  # a specialized executable's lowering, as the benchmark reaches it
        def for_feeds(self, feeds):
            return type("E", (), {"lowered": lowered})()

    floor = model_floor(lowered, "h200").floor_us
    assert bench_cuda.model_floor_note("NVIDIA H200", floor / 1e3 * 3, Exe(), {}).endswith("measured/floor 3.0")
