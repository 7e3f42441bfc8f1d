"""Compiler target 2: a static check with ``nvcc -arch=sm_90 -Xptxas -v``.

Compiles a translation unit to a cubin (no GPU needed) and reads ptxas's
report per kernel: registers, spill stores/loads, stack, shared memory. Fails
with the compiler's own lines on any error. Reports are cached by content.

>>> report = nvcc_check([kernel])                     # doctest: +SKIP
>>> report[kernel.name].registers, report[kernel.name].spill_stores   # doctest: +SKIP
(32, 0)
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from graphopt.errors import GraphoptError

from graphopt.buildcache import cached_file, content_key, graphopt_version
from .kernel import Kernel, translation_unit, unique_kernels

NVCC_FLAGS = ("-cubin", "-Xptxas", "-v", "-std=c++17", "-lineinfo")


@dataclass
class PtxasInfo:
    kernel: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack_bytes: int = 0
    smem_bytes: int = 0
    barriers: int = 0


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else nvcc


_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_][\w]*)'?")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict[str, PtxasInfo]:
    """Per-kernel resource use from ptxas's ``-v`` lines."""
    out: dict[str, PtxasInfo] = {}
    cur: PtxasInfo | None = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(m.group(1), PtxasInfo(m.group(1)))
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            cur.stack_bytes, cur.spill_stores, cur.spill_loads = map(int, m.groups())
        m = _USED.search(line)
        if m:
            cur.registers = int(m.group(1))
            b = _BARS.search(line)
            s = _SMEM.search(line)
            cur.barriers = int(b.group(1)) if b else 0
            cur.smem_bytes = int(s.group(1)) if s else 0
    return out


def nvcc_check(kernels: Sequence[Kernel], arch: str = "sm_90") -> dict[str, PtxasInfo]:
    """Compile every kernel for ``arch`` (a wgmma kernel for the one arch it has, ``sm_90a``:
    ``compile_nvrtc.kernel_arch``); raise on a compiler error; return ptxas's report."""
    from .compile_nvrtc import kernel_arch

    nvcc = nvcc_path()
    if nvcc is None:
        raise GraphoptError("nvcc is not on PATH")
    groups: dict[str, list[Kernel]] = {}
    for k in unique_kernels(kernels):
        groups.setdefault(kernel_arch(k, arch), []).append(k)
    report: dict[str, PtxasInfo] = {}
    for target, ks in groups.items():
        report.update(_nvcc_check_one(nvcc, ks, target))
    return report


def _nvcc_check_one(nvcc: str, ks: list[Kernel], arch: str) -> dict[str, PtxasInfo]:
    src = translation_unit(ks)
    key = content_key("nvcc", src, arch, " ".join(NVCC_FLAGS), nvcc_version(nvcc), graphopt_version())

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="graphopt-nvcc-") as d:
            cu = Path(d) / "kernels.cu"
            cu.write_text(src)
            cmd = [nvcc, f"-arch={arch}", *NVCC_FLAGS, str(cu), "-o", str(Path(d) / "kernels.cubin")]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                errs = [l for l in (res.stderr + res.stdout).splitlines() if "error" in l or "warning" in l]
                raise GraphoptError(f"nvcc -arch={arch} failed on the generated kernels:\n"
                                    + "\n".join((errs or res.stderr.splitlines())[:40]))
            info = parse_ptxas(res.stderr + res.stdout)
            tmp.write_text(json.dumps({k: asdict(v) for k, v in info.items()}))

    path = cached_file("cuda-nvcc", key, ".json", build)
    return {k: PtxasInfo(**v) for k, v in json.loads(path.read_text()).items()}
