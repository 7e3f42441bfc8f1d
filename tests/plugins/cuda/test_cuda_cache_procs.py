"""Several processes compiling at once: two spawned processes build the same cache key at
the same moment; both get a whole, valid entry and the cache holds exactly one (plus its
digest), with no temporary file left behind."""
import multiprocessing as mp
import os
import stat
import time
from pathlib import Path

from graphopt import buildcache as cache

PAYLOAD = "kernel-binary-" * 1000


def _build_same_key(root: str, barrier, results) -> None:
    os.environ["GRAPHOPT_CACHE_DIR"] = root
    key = cache.content_key("two processes")
    built = []

    def build(tmp: Path) -> None:
        built.append(os.getpid())
        with open(tmp, "w") as f:
            f.write(PAYLOAD[: len(PAYLOAD) // 2])
            f.flush()
            time.sleep(0.3)  # the other process reaches the cache while this file is half written
            f.write(PAYLOAD[len(PAYLOAD) // 2:])

    barrier.wait(timeout=60)
    path = cache.cached_file("emu", key, ".so", build)
    results.put((str(path), path.read_text() == PAYLOAD, len(built)))


def test_two_processes_building_one_key_both_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    root = tmp_path / "cache"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_same_key, args=(str(root), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert all(whole for _, whole, _ in got)  # neither saw a half-written file
    assert got[0][0] == got[1][0]
    key = cache.content_key("two processes")
    folder = root / "emu"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{key[:40]}.so", f"{key[:40]}.so.sha256"]  # one entry, its digest, no temporaries
    entry = folder / names[0]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    # the entry left behind is trusted as it is: a third builder does not run
    assert cache._intact(entry, folder / names[1])
