"""The static audit (audit.py) in CI: the sample models' kernels compiled by the real NVRTC for
sm_80 and sm_90 and read with cuobjdump. What must hold now fails the test (local memory
traffic or a stack frame, tensor cores missing from a kernel family meant to use them, an
occupancy under the target); the checks the mainloops do not meet yet are expected failures,
each with its reason in the table. The audit's own rules are checked on hand-written SASS."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt.ir import TensorType
from graphopt.ops.registry import infer_graph
from graphopt.plugins.cuda import compile_nvrtc, sass
from graphopt.plugins.cuda.audit import (CHECKS, MIN_WARPS, TENSOR_CORE_FAMILIES, audit_kernels, audit_one,
                                         audit_table, expected_failure, lower_for_cuda, resident_warps)
from graphopt.plugins.cuda.flash_attention import make_flash_attention, render_flash_attention
from graphopt.plugins.cuda.reduce import make_row_reduce, render_row_reduce
from graphopt.plugins.cuda.sass import Resources
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul, render_tc_matmul


def test_resident_warps_follow_registers_shared_memory_and_threads():
    assert resident_warps("sm_90", 256, 32, 0) == 64  # thread limit: 8 blocks of 8 warps
    assert resident_warps("sm_90", 256, 255, 0) == 8  # 256 registers a thread: one block
    assert resident_warps("sm_80", 128, 64, 100 * 1024) == 4  # one 100 KB block fits in 164 KB
    assert resident_warps("sm_90", 128, 64, 100 * 1024) == 8  # two fit in 228 KB


CLEAN = Resources(registers=64, stack=0, shared=16384, local=0)


@pytest.mark.parametrize("sass_text,res,check,want", [
    ("HMMA.16816.F32 R4, R8, R12, R4 ;", CLEAN, "tensor_cores", "pass"),
    ("FFMA R4, R8, R12, R4 ;", CLEAN, "tensor_cores", "FAIL"),  # a tensor-core family without HMMA
    ("HMMA.16816.F32 R4 ; STL [R1], R4 ;", CLEAN, "no_local", "FAIL"),
    ("HMMA.16816.F32 R4 ;", Resources(64, 8, 16384, 0), "no_local", "FAIL"),  # a stack frame
    ("HMMA.16816.F32 R4 ;", Resources(255, 0, 200 * 1024, 0), "occupancy", "FAIL"),
])
def test_checks_that_must_hold(sass_text, res, check, want):
    k = render_flash_attention(make_flash_attention((1, 2), 64, 64, 64, 64))
    assert audit_one(k, 128, "sm_90", sass_text, res).results[check] == want


def test_expected_failures_and_their_reversal():
    vec = render_flash_attention(make_flash_attention((1, 2), 64, 64, 64, 64))  # 16-byte rows: cp.async expected
    plain = "HMMA.16816.F32 R4 ; LDG.E.128.CONSTANT R8, desc[UR4][R2.64] ;"
    a = audit_one(vec, 128, "sm_90", plain, CLEAN)
    assert a.results["async_copy"] == "FAIL" and a.results["vec16"] == "pass"
    odd = render_flash_attention(make_flash_attention((1, 2), 64, 64, 20, 20))  # rows of 20 halves: element loads
    b = audit_one(odd, 128, "sm_90", "HMMA.16816.F32 R4 ; LDG.E.U16 R8 ;", CLEAN)
    assert b.results["async_copy"] == "xfail: " + expected_failure("async_copy", odd.spec)
    assert b.results["vec16"].startswith("xfail: heads whose width") and not b.failures()
    narrow = render_tc_matmul(make_tc_matmul(64, 64, 20))  # K of 20: no whole 16-byte rows of A
    c = audit_one(narrow, 128, "sm_90", "HMMA.16816.F32 R4 ; LDGSTS.E.BYPASS.128 [R5], desc[UR4][R2.64] ;", CLEAN)
    assert c.results["async_copy"].startswith("XPASS") and c.results["vec16"].startswith("XPASS")
    assert expected_failure("async_copy", make_tc_matmul(64, 64, 64)) is None  # must hold
    red = render_row_reduce(make_row_reduce("softmax", (4, 64), (1,), dtype="float16"))
    r = audit_one(red, 128, "sm_90", "", CLEAN)
    assert [r.results[c] for c in ("tensor_cores", "async_copy", "vec16")] == ["n/a"] * 3  # no matrix work
    table = audit_table([b, r], "two kernels")
    assert "| xfail |" in table and expected_failure("vec16", odd.spec) in table


needs_tools = pytest.mark.skipif(not compile_nvrtc.nvrtc_available()[0] or sass.tool("cuobjdump") is None,
                                 reason="the audit needs NVRTC and cuobjdump (graphopt[cuda,cuda-tools])")


class _Launch:
    def __init__(self, kernel, block):
        self.kernel, self.block = kernel, block


@needs_tools
def test_tensor_core_kernels_compile_to_hmma_without_spills():
    """The 4096^3 float16 GEMM of the benchmark and BERT-base's attention, as NVRTC builds them."""
    gemm = make_tc_matmul(4096, 4096, 4096)
    flash = make_flash_attention((1, 12), 128, 128, 64, 64)
    launches = [_Launch(render_tc_matmul(gemm), gemm.block()), _Launch(render_flash_attention(flash), flash.block())]
    audits = audit_kernels(launches)
    assert len(audits) == 4
    for a in audits:
        assert not a.failures(), audit_table(audits)
        assert a.results["tensor_cores"] == "pass" and a.warps_per_sm >= MIN_WARPS
    assert all(a.results["vec16"] == a.results["async_copy"] == "pass" for a in audits)  # cp.async, 16 bytes


# the tensor-core paths: convolutions at -O3 (NHWC), a transformer's attention and GEMMs (the GPT block's
# causal attention is the same kernel); every sample in float32 and float16, ResNet-50 and BERT-base are
# in benchmarks/bench_audit.py's report (the suite's time budget)
SAMPLES = [("resnet_style", "float16", 3), ("bert_style", "float16", 2)]


def sample_launches(name: str, dtype: str, level: int):
    from samples.models import load_graph
    from test_cuda_models import sample_feeds

    from graphopt.quantize import convert_float16

    g = load_graph(name).clone()
    if dtype == "float16":
        g = convert_float16(g)
    feeds = sample_feeds(g)
    for v in g.inputs:
        v.type = TensorType(v.dtype, np.shape(feeds[v.name]))
    infer_graph(g)
    return lower_for_cuda(g, level).launches


@needs_tools
@pytest.mark.parametrize("name,dtype,level", SAMPLES, ids=[f"{n}-{d}-O{lv}" for n, d, lv in SAMPLES])
def test_sample_models_pass_the_audit(name, dtype, level, record_property):
    pytest.importorskip("torch")
    audits = audit_kernels(sample_launches(name, dtype, level))
    table = audit_table(audits, f"{name} {dtype} -O{level}")
    record_property("audit", table)
    bad = {f"{a.kernel} {a.arch}": a.failures() for a in audits if a.failures()}
    assert not bad, f"{bad}\n{table}"
    meant = [a for a in audits if a.family in TENSOR_CORE_FAMILIES]
    assert all(a.results["tensor_cores"] == "pass" for a in meant), table
    if dtype == "float16" and name == "bert_style":
        assert any(a.family == "FlashAttentionSpec" for a in audits), table  # attention fused onto tensor cores
    assert set(CHECKS) == set(audits[0].results)
