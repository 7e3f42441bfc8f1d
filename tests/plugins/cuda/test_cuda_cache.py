"""The build cache: content keys, owner-only permissions, atomic publication, concurrent
builders, failed builds leaving nothing."""
import os
import stat
import threading
import time

import pytest

from graphopt.errors import GraphoptError
from graphopt import buildcache as cache


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
    assert sorted(p.name for p in cache.cache_dir("emu").iterdir()) == [f"{key[:40]}.so", f"{key[:40]}.so.sha256"]


def _entry(cache_root, text="good"):
    calls = []

    def build(tmp):
        calls.append(1)
        tmp.write_text(text)

    key = cache.content_key("entry")
    path = cache.cached_file("emu", key, ".so", build)
    return key, path, build, calls


def test_a_truncated_entry_is_rebuilt(cache_root):
    key, path, build, calls = _entry(cache_root)
    path.write_text("go")  # a crash or a full disk left part of it
    assert cache.cached_file("emu", key, ".so", build).read_text() == "good" and len(calls) == 2


def test_an_entry_without_its_digest_is_rebuilt(cache_root):
    key, path, build, calls = _entry(cache_root)
    path.with_name(path.name + ".sha256").unlink()  # an entry written by an older graphopt
    assert cache.cached_file("emu", key, ".so", build).read_text() == "good" and len(calls) == 2
    assert cache.cached_file("emu", key, ".so", build) and len(calls) == 2  # and trusted from then on


def test_a_writable_by_others_or_linked_entry_is_not_trusted(cache_root, tmp_path):
    key, path, build, calls = _entry(cache_root)
    os.chmod(path, 0o666)
    assert cache.cached_file("emu", key, ".so", build).read_text() == "good" and len(calls) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    elsewhere = tmp_path / "planted.so"
    elsewhere.write_text("good")
    path.unlink()
    path.symlink_to(elsewhere)  # same bytes, but not a file of the cache
    cache.cached_file("emu", key, ".so", build)
    assert len(calls) == 3 and not path.is_symlink()


def test_a_content_check_can_reject_an_entry(cache_root):
    key = cache.content_key("json")
    cache.write_cached_text("gemm", key, ".json", "{not json")
    ok = cache.write_cached_text("gemm", key, ".json", '{"a": 1}', valid=lambda p: p.read_text().startswith("{\""))
    assert ok.read_text() == '{"a": 1}'


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to hand a file to another user")
def test_an_entry_of_another_user_is_rebuilt(cache_root):
    key, path, build, calls = _entry(cache_root)
    os.chown(path, 12345, 12345)
    cache.cached_file("emu", key, ".so", build)
    assert len(calls) == 2 and path.stat().st_uid == os.getuid()
