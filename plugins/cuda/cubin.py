"""What a cubin holds, read from its ELF: checked before it is cached or loaded.

NVRTC's cubin is an ELF64 file for ``EM_CUDA`` whose flags carry the SM version and
whose symbol table names each ``extern "C"`` kernel. ``read_cubin`` refuses anything
else (a truncated file, a PTX text, a cubin for another SM) with one line, and lists
the kernels, so a module is known to hold every function the launch plan names before
a driver ever sees it. The standard library's ``struct`` is enough for the few header
fields this needs; pulling in a general ELF library was not worth a dependency.

>>> info = read_cubin(path.read_bytes())          # doctest: +SKIP
>>> info.arch, "go_ew_1a2b" in info.kernels      # doctest: +SKIP
('sm_90', True)

An arch-specific cubin (``-arch=sm_90a``: the ``wgmma`` kernels) reads ``sm_90a``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from graphopt.errors import GraphoptError

EM_CUDA = 190
SHT_SYMTAB = 2
SHT_NOBITS = 8
STT_FUNC = 2


@dataclass(frozen=True)
class CubinInfo:
    arch: str  # "sm_90"
    kernels: frozenset[str]  # global function symbols
    size: int


def _sm_of(flags: int, abi_version: int) -> int:
    """The SM number in ``e_flags``: bits 8-15 in the CUDA 12.8+ layout (ELF ABI version 8
    and up, which also has an "a"/"f" variant bit), bits 0-7 before it."""
    return (flags >> 8) & 0xFF if abi_version >= 8 else flags & 0xFF


NV_COMPAT = ".nv.compat"
COMPAT_ARCH_SPECIFIC = 0x09  # in .nv.compat: nonzero for an arch-specific ("a") cubin, as cuobjdump reads it


def _arch_specific(data: bytes, offset: int, size: int) -> bool:
    """Whether the ``.nv.compat`` attributes at ``offset`` mark an arch-specific cubin (``sm_90a``):
    NVRTC 13 writes the same ``e_flags`` for sm_90 and sm_90a, and this attribute (4-byte entries
    of format, attribute and value; format 4 carries a 2-byte size and that many bytes) differs."""
    pos, end = offset, offset + size
    while pos + 4 <= end:
        fmt, attr, value = data[pos], data[pos + 1], struct.unpack_from("<H", data, pos + 2)[0]
        if attr == COMPAT_ARCH_SPECIFIC and fmt != 4:
            return value != 0
        pos += 4 + (value if fmt == 4 else 0)
    return False


def read_cubin(data: bytes, what: str = "cubin") -> CubinInfo:
    """The arch and kernel names of a complete cubin; a one-line ``GraphoptError`` otherwise."""
    def bad(why: str) -> GraphoptError:
        return GraphoptError(f"{what} is not a complete CUDA ELF ({why}, {len(data)} bytes)")

    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise bad("no ELF header")
    if data[4] != 2 or data[5] != 1:
        raise bad("not a little-endian ELF64")
    abi_version = data[8]
    (e_type, e_machine, _, _, e_phoff, e_shoff, e_flags, _, e_phentsize, e_phnum, e_shentsize, e_shnum,
     e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_machine != EM_CUDA:
        raise bad(f"machine {e_machine}, not EM_CUDA")
    if e_phoff + e_phnum * e_phentsize > len(data):  # NVRTC writes the program headers last
        raise bad(f"its program headers end at byte {e_phoff + e_phnum * e_phentsize}")
    if e_shnum == 0 or e_shentsize < 64 or e_shoff + e_shnum * e_shentsize > len(data):
        raise bad(f"its section table ends at byte {e_shoff + e_shnum * e_shentsize}")
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    for _, sh_type, _, _, offset, size, *_ in sections:
        if sh_type != SHT_NOBITS and offset + size > len(data):  # .bss-like sections occupy no file bytes
            raise bad(f"a section ends at byte {offset + size}")
    kernels = set()
    names_off = sections[e_shstrndx][4] if e_shstrndx < len(sections) else 0
    suffix = ""
    for sh_name, _, _, _, offset, size, *_ in sections:
        if data[names_off + sh_name:names_off + sh_name + len(NV_COMPAT) + 1] == NV_COMPAT.encode() + b"\0":
            suffix = "a" if _arch_specific(data, offset, size) else ""
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != SHT_SYMTAB or entsize < 24:
            continue
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = data[str_off:str_off + str_size]
        for k in range(size // entsize):
            st_name, st_info, _, st_shndx, _, _ = struct.unpack_from("<IBBHQQ", data, offset + k * entsize)
            if st_info & 0xF == STT_FUNC and st_info >> 4 == 1 and st_shndx != 0:  # a defined global function
                end = strtab.find(b"\0", st_name)
                kernels.add(strtab[st_name:end].decode(errors="replace"))
    return CubinInfo(arch=f"sm_{_sm_of(e_flags, abi_version)}{suffix}", kernels=frozenset(kernels), size=len(data))
