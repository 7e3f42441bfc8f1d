"""Observers: streaming and memory-bounded; range methods on known distributions."""
import numpy as np
import pytest

from graphopt.errors import GraphoptError
from graphopt.quantize.calibration import HistogramObserver, MinMaxObserver, collect, qparams

RNG = np.random.default_rng(0)


def test_streaming_histogram_equals_one_shot_when_the_range_grows_by_powers_of_two():
    parts = [RNG.uniform(-0.9, 0.9, 5000), RNG.uniform(-3.5, 3.5, 5000), RNG.uniform(-30, 20, 5000)]
    streamed = HistogramObserver(bins=256)
    for p in parts:
        streamed.update(p.astype(np.float32))
    assert streamed.R == 32.0
    one = HistogramObserver(bins=256)
    one.update(np.concatenate(parts).astype(np.float32))
    assert one.R == 32.0
    np.testing.assert_array_equal(streamed.hist, one.hist)  # 2**k bins merge exactly
    assert streamed.hist.sum() + streamed.zeros == 15000
    assert (streamed.min, streamed.max) == (one.min, one.max)


def test_state_stays_fixed_size_however_much_data_is_seen():
    obs = HistogramObserver(bins=512)
    size = obs.nbytes()
    for k in range(20):
        obs.update((RNG.standard_normal(20000) * (k + 1)).astype(np.float32))
    assert obs.nbytes() == size and obs.hist.shape == (512,)
    assert obs.count == 20 * 20000


def test_merge_of_two_workers_equals_one_stream():
    a, b, both = HistogramObserver(256), HistogramObserver(256), HistogramObserver(256)
    xa, xb = RNG.uniform(-1, 1, 3000).astype(np.float32), RNG.uniform(-6, 6, 3000).astype(np.float32)
    a.update(xa)
    b.update(xb)
    both.update(xa)
    both.update(xb)
    a.merge(b)
    np.testing.assert_array_equal(a.hist, both.hist)
    assert (a.min, a.max, a.count) == (both.min, both.max, both.count)


def test_nan_and_inf_are_ignored():
    obs = HistogramObserver(256)
    obs.update(np.array([np.nan, np.inf, -np.inf, 1.0, -2.0], np.float32))
    assert (obs.min, obs.max, obs.count) == (-2.0, 1.0, 2)


def test_percentile_reads_the_histogram():
    x = RNG.standard_normal(200000).astype(np.float32)
    obs = HistogramObserver()
    obs.update(x)
    lo, hi = obs.range("percentile", "uint8", percentile=99.0)
    np.testing.assert_allclose([lo, hi], np.percentile(x, [1, 99]), atol=0.01)
    lo, hi = obs.range("percentile", "int8", percentile=99.0)
    np.testing.assert_allclose(hi, np.percentile(np.abs(x), 99), atol=0.01)
    assert lo == -hi


def test_entropy_clips_a_gaussian_tail_and_ignores_the_relu_spike():
    x = RNG.standard_normal(200000).astype(np.float32)
    obs = HistogramObserver()
    obs.update(x)
    lo, hi = obs.range("entropy", "int8")
    assert 2.5 < hi < obs.max and lo == -hi
    relu = HistogramObserver()
    relu.update(np.maximum(x, 0))  # half the values are exactly 0
    assert relu.zeros > 90000
    lo, hi = relu.range("entropy", "uint8")
    assert lo == 0.0 and 2.5 < hi <= relu.max


def test_mse_clips_rare_outliers_that_minmax_keeps():
    x = RNG.standard_normal(1000000).astype(np.float32)
    x[:2] = [30.0, -30.0]  # two outliers would set a 6x coarser grid for everyone
    obs = HistogramObserver()
    obs.update(x)

    def err(lo, hi):
        s, z, qmin, qmax = qparams(lo, hi, "uint8")
        q = np.clip(np.rint(x / s) + z, qmin, qmax)
        return float(np.mean((x - (q - z) * s) ** 2))

    lo, hi = obs.range("mse", "uint8")
    assert hi < 10 and err(lo, hi) < 0.5 * err(*obs.range("minmax", "uint8"))


def test_qparams_cover_the_range_and_represent_zero_exactly():
    from graphopt.ops.quant import dequantize, quantize

    for lo, hi in [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 0.0)]:
        s, z, qmin, qmax = qparams(lo, hi, "uint8")
        assert qmin <= z <= qmax and s > 0
        assert dequantize(quantize(np.float32(0), s, np.uint8(z)), s, np.uint8(z)) == 0.0
        assert (qmin - z) * s <= min(lo, 0) + s / 2 and (qmax - z) * s >= max(hi, 0) - s / 2
    s, z, _, _ = qparams(-1.0, 3.0, "int8")
    assert z == 0 and np.isclose(s, 3.0 / 127)
    with pytest.raises(GraphoptError):
        qparams(0, 1, "int4")


def test_minmax_observer_refuses_histogram_methods():
    o = MinMaxObserver()
    o.update(np.ones(3, np.float32))
    with pytest.raises(GraphoptError, match="HistogramObserver"):
        o.range("entropy")


def test_collect_feeds_each_value_batch_by_batch(convnet, calib):
    obs, n = collect(convnet, ["x", "y"], iter(calib), "percentile")
    assert n == len(calib)
    assert obs["x"].count == sum(b["x"].size for b in calib)
    assert np.isclose(obs["x"].max, max(b["x"].max() for b in calib))
    with pytest.raises(GraphoptError, match="no value named"):
        collect(convnet, ["nope"], calib)
