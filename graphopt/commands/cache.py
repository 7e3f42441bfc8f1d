"""``graphopt cache info|clear``: the build cache of compiled kernels (see ``graphopt.buildcache``)."""
from __future__ import annotations

from .base import add_common, register_verb
from .output import Table, show


def _arguments(p) -> None:
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--kind", action="append", default=[], metavar="KIND",
                   help="clear only this kind of artifact (cuda-emu, cuda-nvrtc, cpu-native, ...); repeatable")
    add_common(p, passes=False)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@register_verb("cache", "show or clear the build cache of compiled kernels",
               "examples:\n  graphopt cache info\n  graphopt cache clear --kind cuda-emu\n"
               "the cache is $GRAPHOPT_CACHE_DIR or ~/.cache/graphopt, at most $GRAPHOPT_CACHE_MAX_MB MiB "
               "(default 2048)", _arguments)
def cmd_cache(args) -> int:
    from .. import buildcache

    if args.action == "clear":
        res = buildcache.clear_cache(args.kind or None)
        show(args, res, f"removed {res['files']} file(s), {_mib(res['bytes'])}")
        return 0
    info = buildcache.cache_info()
    t = Table("kind", "entries", "size", right=("entries", "size"))
    for kind, k in info["kinds"].items():
        t.add_row(kind, k["entries"], _mib(k["bytes"]))
    tmp = info["temporary"]
    show(args, info, f"cache {info['root']}: {_mib(info['bytes'])} of at most {_mib(info['max_bytes'])}",
         t if info["kinds"] else "(empty)",
         f"{tmp['files']} temporary file(s) of unfinished builds, {_mib(tmp['bytes'])}" if tmp["files"] else None)
    return 0
