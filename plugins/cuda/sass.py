"""What NVRTC's machine code says: resources per kernel and the SASS text, read with NVIDIA's tools.

``cuobjdump`` (the ``nvidia-cuda-cuobjdump`` wheel, or a CUDA toolkit on the PATH) reads a cubin
on any machine, GPU or not. ``resource_usage`` gives registers, stack, shared and local memory per
kernel (local memory or a stack frame means spills or an array indexed at run time); ``sass``
gives the disassembly, which a static audit reads for tensor-core instructions, async copies,
vector loads and local-memory traffic.

>>> resource_usage(compile_cubin(source, "sm_90"))["go_ew_1a2b"]      # doctest: +SKIP
Resources(registers=16, stack=0, shared=0, local=0)
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from graphopt.errors import GraphoptError


@functools.lru_cache(maxsize=None)
def tool(name: str) -> str | None:
    """The path of an NVIDIA binary tool (``cuobjdump``, ``nvdisasm``): the PATH, then the wheels."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", ()):
        for candidate in sorted(Path(root).glob(f"*/bin/{name}")):
            if candidate.is_file():
                return str(candidate)
    return None


def _run(name: str, *args: str) -> str:
    exe = tool(name)
    if exe is None:
        raise GraphoptError(f"{name} is not installed (pip install 'graphopt[cuda-tools]', or a CUDA toolkit)")
    res = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise GraphoptError(f"{name} {' '.join(args[:-1])} failed on {args[-1]}: "
                            f"{(res.stderr or res.stdout).strip().splitlines()[:1]}")
    return res.stdout


@dataclass(frozen=True)
class Resources:
    registers: int
    stack: int
    shared: int
    local: int


_FUNC = re.compile(r"^\s*Function\s+(\S+):\s*$")
_FIELDS = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


def resource_usage(cubin: Path) -> dict[str, Resources]:
    """Per kernel of ``cubin``: registers, stack frame, static shared memory and local memory bytes."""
    out: dict[str, Resources] = {}
    name = None
    for line in _run("cuobjdump", "--dump-resource-usage", str(cubin)).splitlines():
        m = _FUNC.match(line)
        if m:
            name = m.group(1)
            continue
        fields = dict(_FIELDS.findall(line))
        if name and "REG" in fields:
            out[name] = Resources(int(fields["REG"]), int(fields.get("STACK", 0)), int(fields.get("SHARED", 0)),
                                  int(fields.get("LOCAL", 0)))
            name = None
    return out


def sass(cubin: Path) -> str:
    """The SASS of every kernel in ``cubin`` (``cuobjdump -sass``)."""
    return _run("cuobjdump", "-sass", str(cubin))
