"""Fixtures of the quantization tests (the models themselves are in quant_models.py)."""
import pytest

from quant_models import batches, build_convnet


@pytest.fixture
def convnet():
    return build_convnet()


@pytest.fixture
def calib():
    return batches()
