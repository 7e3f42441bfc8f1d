"""What every verb of the ``graphopt`` command shares: the verb registry, common options,
argument types that refuse bad values, model loading and output files that are never
left half-written.

A verb is a function ``(args) -> exit status`` plus a function adding its arguments;
registering one is a decorator (``graphopt.cli`` imports the modules listed in
``VERB_MODULES`` before it builds the parser):

>>> @register_verb("hello", "print a greeting", "example:\\n  graphopt hello --name ada",
...                lambda p: p.add_argument("--name", default="world"))   # doctest: +SKIP
... def cmd_hello(args):
...     print(f"hello {args.name}")
...     return 0
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import GraphoptError, InputError


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


VERBS: dict[str, Verb] = {}

# modules that register verbs of their own when imported (graphopt.cli imports them)
VERB_MODULES = ["graphopt.commands.compare", "graphopt.commands.cache", "graphopt.fuzz.cli", "graphopt.bisect"]


def register_verb(name: str, help: str, example: str,
                  arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register the decorated ``run(args) -> int`` as ``graphopt <name>`` (see the module docstring)."""

    def deco(run):
        VERBS[name] = Verb(name, help, example, arguments or (lambda p: None), run)
        return run

    return deco


# -- argument types: a bad value is argparse's one-line error, before any work ---------------

def positive_int(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def nonneg_int(text: str) -> int:
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {n}")
    return n


def nonneg_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return x


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# -- common options ---------------------------------------------------------------------------

def add_common(p: argparse.ArgumentParser, *, passes: bool = True) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="load a plugin (a module name or a .py file) before running; repeatable")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--verbose", action="store_true", help="let onnxruntime's own log through")
    p.add_argument("--debug", action="store_true", help="show tracebacks and verify the IR after every pass")
    if passes:
        p.add_argument("-O", dest="level", type=int, default=2, choices=[0, 1, 2, 3],
                       help="optimization level (default 2)")
        p.add_argument("--passes", default=None,
                       help="comma-separated passes to run instead of the level's; +name entries add to the "
                            "level's pipeline instead (--passes +onnxsim: onnxsim first, then -O2)")
        p.add_argument("--disable", default=None, help="comma-separated passes to skip")


def add_backend_options(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    if default is not None:
        p.add_argument("--backend", default=default, help=f"backend to compile for (default {default})")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option, repeatable (cuda: --option gemm=cublas|generated|auto)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a node the backend has no kernel for instead of running it on the host "
                        "(cuda, cuda-emu: the option strict=true)")


def add_shape_options(p: argparse.ArgumentParser, *, inputs: bool = True) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="the shape of one input (repeatable), e.g. input_ids:1,128")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="size of each input's leading symbolic dim (default 1); other symbolic dims need "
                        "--input-shape")
    if inputs:
        p.add_argument("--inputs", metavar="IN.npz", help="inputs by name (default: random, seeded)")


def options(args) -> dict:
    """``--option key=value`` pairs; values read as int, float or true/false where they parse."""
    out = {}
    for item in getattr(args, "option", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GraphoptError(f"--option {item!r}: expected KEY=VALUE")
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    if getattr(args, "strict", False):
        out["strict"] = True
    return out


def split(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def load_plugins(args) -> None:
    from ..plugin_loader import load_plugin

    for spec in getattr(args, "plugin", ()):
        load_plugin(spec)


def load_model(args, path: str | None = None):
    """The model named on the command line (after ``--plugin`` modules are loaded)."""
    import graphopt

    from ..progress import step

    load_plugins(args)
    path = path or args.model
    with step(f"loading {Path(path).name}"):
        return graphopt.load(path)


def compile_model(args, graph, backend: str | None = None):
    """``graphopt.compile`` with the verb's level, passes and backend options."""
    import graphopt

    from ..progress import step

    backend = backend or args.backend
    with step(f"optimizing and compiling for {backend}"):
        return graphopt.compile(graph, backend=backend, level=args.level, passes=split(args.passes),
                                disable=split(args.disable), verify=args.debug, **options(args))


# -- output files -------------------------------------------------------------------------------

def check_writable(path: str | None, what: str) -> None:
    """Refuse an output path now, before any work, when it cannot be written."""
    if not path:
        return
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{what} {path}: is a folder")
    if not folder.is_dir():
        raise InputError(f"{what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: folder {folder} is not writable")


@contextlib.contextmanager
def outputs() -> Iterator[list[Path]]:
    """Paths a verb wrote, removed again if the verb then fails: a failing command leaves no output."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for p in written:
            with contextlib.suppress(OSError):
                Path(p).unlink()
        raise


def write_json(path: str, obj) -> Path:
    from ..fileutil import atomic_write

    with atomic_write(Path(path), "w") as f:
        json.dump(obj, f, indent=2, default=str)
    return Path(path)


def write_npz(path: str, arrays: dict) -> Path:
    import numpy as np

    from ..fileutil import atomic_write

    with atomic_write(Path(path)) as f:
        np.savez(f, **arrays)
    return Path(path)
