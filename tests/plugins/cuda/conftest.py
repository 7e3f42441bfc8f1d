import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cuda_cache_dir(tmp_path_factory):
    """Keep builds in the user's cache (shared across runs) unless a test run asks otherwise."""
    if "GRAPHOPT_TEST_FRESH_CACHE" in os.environ:
        os.environ["GRAPHOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphopt-cache"))
    yield
