"""Plugin discovery: entry-point groups ``graphopt.passes`` and ``graphopt.backends``.

A pass plugin's entry point names a module; importing it runs its
``@register_pass`` decorators. A backend plugin's entry point names a
``Backend`` class (or factory). ``--plugin module.name`` or ``--plugin
path/to/file.py`` loads one explicitly. Set ``GRAPHOPT_NO_PLUGINS=1`` to stop
autoloading third-party plugins (the built-ins still load).

A broken plugin is reported as one line and the rest still load::

    graphopt: failed to load plugin "fast" (from distribution fastpass 1.2): ImportError: ...
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

from .errors import PluginError

PASS_GROUP = "graphopt.passes"
BACKEND_GROUP = "graphopt.backends"
BUILTIN_DIST = "graphopt"

_loaded = False
_backend_factories: dict[str, tuple[object, str]] = {}  # name -> (factory or EntryPoint, source)
warnings: list[str] = []  # load failures of autoloaded plugins, one line each


def _dist_label(ep) -> str:
    d = getattr(ep, "dist", None)
    if d is None:
        return "unknown distribution"
    return f"{d.metadata['Name']} {d.version}"


def _report(msg: str) -> None:
    warnings.append(msg)
    print(f"graphopt: {msg}", file=sys.stderr)


def _entry_points(group: str):
    return sorted(metadata.entry_points(group=group), key=lambda e: (e.dist is None or
                                                                      e.dist.metadata["Name"] != BUILTIN_DIST,
                                                                      e.name))


def _builtin_only() -> bool:
    return os.environ.get("GRAPHOPT_NO_PLUGINS", "") not in ("", "0")


def load_plugins(force: bool = False) -> None:
    """Import the built-in passes and every installed plugin once per process."""
    global _loaded
    if _loaded and not force:
        return
    _loaded = True
    from . import passmanager

    # built-ins first and always, even when no entry points are installed (e.g. a plain checkout)
    passmanager._current_source[0] = "graphopt"
    importlib.import_module("graphopt.passes")
    _backend_factories.setdefault("cpu", ("graphopt.plugins.cpu:CpuBackend", "graphopt"))
    _backend_factories.setdefault("cuda", ("graphopt.plugins.cuda:CudaBackend", "graphopt"))
    _backend_factories.setdefault("cuda-emu", ("graphopt.plugins.cuda:CudaEmuBackend", "graphopt"))
    for ep in _entry_points(PASS_GROUP):
        is_builtin = ep.dist is not None and ep.dist.metadata["Name"] == BUILTIN_DIST
        if is_builtin or _builtin_only():
            continue
        label = _dist_label(ep)
        passmanager._current_source[0] = label
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _report(f'failed to load plugin "{ep.name}" (from distribution {label}): '
                    f"{type(exc).__name__}: {_first_line(exc)}")
        finally:
            passmanager._current_source[0] = "graphopt"
    for ep in _entry_points(BACKEND_GROUP):
        is_builtin = ep.dist is not None and ep.dist.metadata["Name"] == BUILTIN_DIST
        if not is_builtin and _builtin_only():
            continue
        _backend_factories[ep.name] = (ep, _dist_label(ep))


def _first_line(exc: BaseException) -> str:
    s = str(exc)
    return s.splitlines()[0] if s else ""


def load_plugin(spec: str) -> None:
    """Load a plugin the user named (``module.name`` or ``path/file.py``); failure is fatal."""
    load_plugins()
    from . import passmanager

    passmanager._current_source[0] = spec
    try:
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            path = Path(spec)
            if not path.is_file():
                raise PluginError(f'plugin "{spec}": no such file')
            mod_name = f"graphopt_plugin_{path.stem}"
            s = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = mod
            s.loader.exec_module(mod)
        else:
            mod = importlib.import_module(spec)
        for attr in ("BACKEND", "backend"):
            factory = getattr(mod, attr, None)
            if factory is not None:
                inst = factory() if callable(factory) and isinstance(factory, type) else factory
                _backend_factories[inst.name] = (factory, spec)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f'failed to load plugin "{spec}": {type(exc).__name__}: {_first_line(exc)}') from exc
    finally:
        passmanager._current_source[0] = "graphopt"


def register_backend(name: str, factory, source: str = "graphopt") -> None:
    """Register a backend factory directly (tests, embedding)."""
    _backend_factories[name] = (factory, source)


def backend_names() -> list[str]:
    load_plugins()
    return sorted(_backend_factories)


def get_backend(name: str):
    """Instantiate the backend registered as ``name``."""
    load_plugins()
    if name not in _backend_factories:
        raise PluginError(f"unknown backend {name!r} (known: {', '.join(sorted(_backend_factories))})")
    factory, source = _backend_factories[name]
    try:
        if isinstance(factory, str):
            mod, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(mod), attr)
        elif isinstance(factory, metadata.EntryPoint):
            factory = factory.load()
        return factory() if callable(factory) else factory
    except Exception as exc:
        raise PluginError(f'failed to load backend "{name}" (from distribution {source}): '
                          f"{type(exc).__name__}: {_first_line(exc)}") from exc
