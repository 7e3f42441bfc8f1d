"""Checked emulation: generated kernels run under AddressSanitizer and a shared-memory race check.

``GRAPHOPT_EMU_CHECK`` names the checks (comma-separated) that every emulation library
built in the process is compiled for:

* ``asan``: the library is compiled with ``-fsanitize=address``; every value of a compiled
  graph gets its own allocation instead of a slot in the arena (so a kernel that strays
  past its tensor into the next one is caught), with red zones around each one, around
  each ``__shared__`` array and each local array. A report makes the launch fail with a
  ``GraphoptError`` naming the kernel (the process goes on: ``-fsanitize-recover``).
  AddressSanitizer's runtime must be the first library the process loads:
  ``python -m graphopt.plugins.cuda.emucheck asan -- python -m pytest ...`` sets that up.
* ``race``: a launch runs its blocks, and each block's threads between two barriers, in an
  order chosen by a seed, and shared memory starts every block filled with that seed's
  garbage; a compiled graph runs once per seed in ``RACE_SEEDS`` (its buffers filled with
  the seed's garbage too) and every launch's results must agree bit for bit. A read of
  shared memory that another thread writes in the same phase, a missing barrier, a read of
  memory nothing wrote, two blocks writing one element with different values: each makes
  the orders disagree, and the error names the first launch that did. Threads of a block
  (or warp) waiting at different barriers fail the launch too.

>>> os.environ["GRAPHOPT_EMU_CHECK"] = "race"      # doctest: +SKIP
>>> graphopt.compile(model, backend="cuda-emu")(x)  # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import sys

import numpy as np

from graphopt.errors import GraphoptError

ENV = "GRAPHOPT_EMU_CHECK"
LOG_ENV = "GRAPHOPT_EMU_CHECK_LOG"  # a file: one line per checked launch ("kernel<TAB>ok|error")
MODES = ("asan", "race")
RACE_SEEDS = (0, 1, 2)  # in order, reversed, shuffled

FLAGS = {
    "asan": ("-DGO_EMU_CHECK_ASAN", "-fsanitize=address", "-fsanitize-recover=address", "-fno-omit-frame-pointer",
             "-fsanitize-sections=go_emu_shared", "-g1", "-O1"),
    "race": ("-DGO_EMU_CHECK_RACE",),
}
ASAN_OPTIONS = "detect_leaks=0:halt_on_error=0:detect_stack_use_after_return=0:allocator_may_return_null=1"


def modes() -> frozenset[str]:
    """The checks ``GRAPHOPT_EMU_CHECK`` asks for (empty: none)."""
    return parse(os.environ.get(ENV, ""))


def parse(raw: str) -> frozenset[str]:
    """The checks a ``GRAPHOPT_EMU_CHECK`` value names; an unknown one is a one-line error."""
    got = frozenset(m.strip() for m in raw.split(",") if m.strip())
    bad = sorted(got - set(MODES))
    if bad:
        raise GraphoptError(f"{ENV}={raw!r}: unknown check {bad[0]!r}; expected a comma-separated subset of "
                            f"{', '.join(MODES)}")
    return got


def compile_flags(active: frozenset[str]) -> tuple[str, ...]:
    """Extra host-compiler flags for the checks ``active``."""
    if "asan" in active:
        require_asan()
    return tuple(f for m in MODES if m in active for f in FLAGS[m])


def asan_loaded() -> bool:
    """Whether AddressSanitizer's runtime is in this process."""
    return hasattr(ctypes.CDLL(None), "__asan_init")


def require_asan() -> None:
    if not asan_loaded():
        raise GraphoptError(f"{ENV}=asan needs AddressSanitizer's runtime loaded first: run the command as "
                            f"'python -m graphopt.plugins.cuda.emucheck asan -- <command>'")


def race_seeds() -> tuple[int, ...]:
    """The seeds a checked run goes through: several under ``race``, else one."""
    return RACE_SEEDS if "race" in modes() else (0,)


def fill_byte(seed: int) -> int:
    """The garbage buffers hold before a run under ``seed`` (as the header fills shared memory)."""
    return 0xFF if seed == 0 else 0x7F if seed == 1 else (0x55 + seed) & 0xFF


SEED_NAMES = {0: "in order", 1: "reversed", 2: "shuffled"}


def digest(buffers) -> bytes:
    """One hash of the bytes of ``buffers`` (None entries skipped)."""
    h = hashlib.blake2b(digest_size=16)
    for b in buffers:
        if b is not None:
            h.update(memoryview(np.ascontiguousarray(b).view(np.uint8)))
    return h.digest()


def summary(report: str) -> str:
    """One line from an AddressSanitizer report (the kind of error, the access, where it
    falls); other reports (the race check's) as they are. The full report is on stderr."""
    kind = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", report)
    if not kind:
        return report.strip()
    access = re.search(r"^(READ|WRITE) of size (\d+)", report, re.M)
    where = re.search(r"is located (.*)$", report, re.M)
    parts = [kind.group(1)]
    if access:
        parts.append(f"{access.group(1)} of {access.group(2)} bytes")
    if where:
        parts.append(where.group(1).strip())
    return ", ".join(parts) + " (AddressSanitizer's report is on stderr)"


def log_launch(name: str, ok: bool) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{name}\t{'ok' if ok else 'error'}\n".encode())
        finally:
            os.close(fd)


def summarize(path: str) -> str:
    """'N kernels checked in M launches, F findings' from a launch log."""
    kernels, launches, bad = set(), 0, set()
    with open(path) as f:
        for line in f:
            name, _, result = line.rstrip("\n").partition("\t")
            kernels.add(name)
            launches += 1
            if result != "ok":
                bad.add(name)
    return (f"{len(kernels)} kernels checked in {launches} launches, {len(bad)} with findings"
            + (f": {', '.join(sorted(bad)[:10])}" if bad else ""))


def checked_env(active: str, log: str | None = None) -> dict:
    """The environment a command runs under for the checks ``active`` ("asan,race")."""
    env = dict(os.environ, **{ENV: active})
    if log:
        env[LOG_ENV] = log
    if "asan" in active.split(","):
        from .compile_emu import host_compiler

        lib = subprocess.run([host_compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=False).stdout.strip()
        if not lib or not os.path.isabs(lib):
            raise GraphoptError("the host compiler has no AddressSanitizer runtime (libasan.so)")
        env["LD_PRELOAD"] = " ".join(filter(None, [lib, env.get("LD_PRELOAD", "")]))
        env["ASAN_OPTIONS"] = ":".join(filter(None, [ASAN_OPTIONS, env.get("ASAN_OPTIONS", "")]))
    return env


def main(argv=None) -> int:
    """``python -m graphopt.plugins.cuda.emucheck asan,race [--log FILE] -- COMMAND...``: run
    COMMAND with the checks on (AddressSanitizer preloaded for ``asan``) and, with ``--log``,
    print how many kernels were checked and how many had findings."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m graphopt.plugins.cuda.emucheck", description=main.__doc__)
    ap.add_argument("checks", help=f"comma-separated: {', '.join(MODES)}")
    ap.add_argument("--log", help="append one line per checked launch to this file, and summarize it")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, cmd = ap.parse_args(argv[:cut]), argv[cut + 1:]
    if not cmd:
        ap.error("no command given (put it after --)")
    try:
        parse(args.checks)
        env = checked_env(args.checks, os.path.abspath(args.log) if args.log else None)
    except GraphoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if args.log and os.path.exists(args.log):
        print(f"emucheck ({args.checks}): {summarize(args.log)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
