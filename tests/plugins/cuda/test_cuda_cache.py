"""The build cache: content keys, owner-only permissions, atomic publication, concurrent
builders, failed builds leaving nothing."""
import os
import stat
import threading
import time

import pytest

from graphopt.errors import GraphoptError
from graphopt.plugins.cuda import cache


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(root))
    return root


def test_key_covers_every_part_and_its_boundaries():
    k = cache.content_key("src", "-O2")
    assert k == cache.content_key("src", "-O2")
    assert k != cache.content_key("src", "-O3")
    assert k != cache.content_key("src-", "O2")  # moving a boundary changes the key
    assert len(k) == 64


def test_folders_are_0700_and_files_0600(cache_root):
    path = cache.write_cached_text("emu", cache.content_key("a"), ".txt", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(cache_root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loose_permissions_are_tightened(cache_root):
    cache_root.mkdir(mode=0o777)
    os.chmod(cache_root, 0o777)
    cache.cache_dir("emu")
    assert stat.S_IMODE(cache_root.stat().st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to hand a folder to another user")
def test_a_folder_of_another_user_is_refused(cache_root):
    cache_root.mkdir()
    os.chown(cache_root, 12345, 12345)
    with pytest.raises(GraphoptError, match="belongs to another user"):
        cache.cache_dir("emu")


def test_existing_entries_are_not_rebuilt(cache_root):
    calls = []

    def build(tmp):
        calls.append(tmp)
        tmp.write_text("v1")

    key = cache.content_key("x")
    p1 = cache.cached_file("emu", key, ".so", build)
    p2 = cache.cached_file("emu", key, ".so", build)
    assert p1 == p2 and len(calls) == 1


def test_failed_build_leaves_nothing(cache_root):
    def build(tmp):
        tmp.write_text("half")
        raise RuntimeError("compiler crashed")

    key = cache.content_key("broken")
    with pytest.raises(RuntimeError):
        cache.cached_file("emu", key, ".so", build)
    assert list(cache.cache_dir("emu").iterdir()) == []


def test_concurrent_builders_of_one_key_both_succeed(cache_root):
    key = cache.content_key("race")
    results, errors = [], []

    def build(tmp):
        with open(tmp, "w") as f:
            f.write("part-")
            time.sleep(0.05)  # readers must never see this half-written file
            f.write("done")

    def worker():
        try:
            results.append(cache.cached_file("emu", key, ".so", build).read_text())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == ["part-done"] * 4
    assert [p.name for p in cache.cache_dir("emu").iterdir()] == [f"{key[:40]}.so"]  # no temp files left
