"""The build cache's housekeeping: graphopt cache info|clear, the size limit, killed builds' temp files."""
import json
import os
import subprocess
import sys
import time

import pytest

from graphopt import buildcache
from graphopt.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def build_bytes(n):
    def build(tmp):
        tmp.write_bytes(b"x" * n)
    return build


def test_info_and_clear(cache, capsys):
    a = buildcache.cached_file("cuda-emu", buildcache.content_key("a"), ".so", build_bytes(1000))
    buildcache.cached_file("cpu-native", buildcache.content_key("b"), ".so", build_bytes(3000))
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["root"] == str(cache)
    assert info["kinds"]["cuda-emu"] == {"entries": 1, "bytes": 1000 + 65}  # the entry and its sha256 sidecar
    assert info["kinds"]["cpu-native"]["entries"] == 1
    assert main(["cache", "clear", "--kind", "cuda-emu"]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out and not a.exists()
    assert main(["cache", "clear", "--kind", "nope"]) == 1
    assert "no kind 'nope' (it has: cpu-native)" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0 and buildcache.cache_info()["kinds"] == {}


def test_size_limit_evicts_least_recently_used(cache, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX_MB", str(2500 / 2**20))  # 2500 bytes
    keys = [buildcache.content_key(str(i)) for i in range(3)]
    first = buildcache.cached_file("k", keys[0], ".bin", build_bytes(1000))
    second = buildcache.cached_file("k", keys[1], ".bin", build_bytes(1000))
    old = time.time() - 100
    os.utime(first, (old, old))
    os.utime(second, (old - 10, old - 10))
    assert buildcache.cached_entry("k", keys[0], ".bin") == first  # a hit: first is now the most recent
    third = buildcache.cached_file("k", keys[2], ".bin", build_bytes(1000))
    assert first.exists() and third.exists() and not second.exists()
    assert not second.with_name(second.name + ".sha256").exists()
    with pytest.raises(buildcache.GraphoptError, match="GRAPHOPT_CACHE_MAX_MB"):
        monkeypatch.setenv("GRAPHOPT_CACHE_MAX_MB", "lots")
        buildcache.max_bytes()


def test_a_file_that_vanishes_while_the_limit_is_enforced_is_skipped(cache, monkeypatch):
    """Builders publish and evict concurrently (NVRTC compiles a model's kernels on a thread pool):
    a file listed by one thread may be renamed or removed by another before it is measured."""
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX_MB", str(1500 / 2**20))
    old = buildcache.cached_file("k", buildcache.content_key("old"), ".bin", build_bytes(1000))
    trusted = buildcache._trusted
    seen = []

    def trusted_then_gone(p):  # another thread's temporary file, published between listing and stat
        ok = trusted(p)
        if ok and p == straggler:
            seen.append(p)
            if len(seen) == 2:  # the first look is the stale-file sweep's, the second the size limit's
                p.unlink()
        return ok

    straggler = old.with_name(".straggler.1.tmp")
    straggler.write_bytes(b"y" * 10)
    straggler.chmod(0o600)
    monkeypatch.setattr(buildcache, "_trusted", trusted_then_gone)
    new = buildcache.cached_file("k", buildcache.content_key("new"), ".bin", build_bytes(1000))
    assert len(seen) == 2
    assert new.read_bytes() == b"x" * 1000 and not old.exists() and not straggler.exists()


def test_a_killed_builds_temp_files_are_removed(cache):
    folder = buildcache.cache_dir("cuda-emu")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = folder / f".0123456789abcdef.{dead}.abc123.so"
    orphan_src = folder / f".0123456789abcdef.{dead}.abc123.cu"
    running = folder / f".0123456789abcdef.{os.getpid()}.def456.so"
    fresh = folder / f".fedcba9876543210.{dead}.aaa111.so"
    for p in (orphan, orphan_src, running, fresh):
        p.write_bytes(b"half a library")
    old = time.time() - 120
    for p in (orphan, orphan_src, running):
        os.utime(p, (old, old))
    info = buildcache.cache_info()
    assert info["temporary"]["files"] == 4
    buildcache.cached_file("cuda-emu", buildcache.content_key("z"), ".so", build_bytes(10))
    assert not orphan.exists() and not orphan_src.exists()
    assert running.exists() and fresh.exists()  # a live build, and one too recent to judge
