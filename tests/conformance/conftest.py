"""Marks used by the conformance tests, and where their collected cases are cached."""
from __future__ import annotations

import os

CACHE_ENV = "GRAPHOPT_CONFORMANCE_CACHE"


def pytest_configure(config):
    config.addinivalue_line("markers", "nondeterministic: random outputs, compared on shape and dtype only")
    # collecting ONNX's cases computes every expected output (seconds per process): keep them in pytest's cache
    cache = getattr(config, "cache", None)
    if cache is not None and CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = str(cache.mkdir("graphopt-conformance"))
