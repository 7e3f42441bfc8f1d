"""Per-layer error table and the model-level metrics of the accuracy budget."""
import math

import numpy as np

from graphopt.quantize import quantize_static
from graphopt.quantize.diagnostics import format_table, output_metric, sqnr_db


def test_sqnr_and_relative_error_definitions():
    x = np.array([3.0, 4.0])
    assert math.isclose(sqnr_db(x, x + np.array([0.03, 0.04])), 40.0)
    assert sqnr_db(x, x) == math.inf


def test_table_has_cumulative_and_local_error_per_layer(convnet, calib):
    qg, rep = quantize_static(convnet, calib, optimize=False, return_report=True)
    rows = {r.layer: r for r in rep.layer_errors}
    assert list(rows) == ["conv1", "conv2", "residual", "fc"]
    # the first layer sees only its own error: cumulative == local
    assert math.isclose(rows["conv1"].sqnr_db, rows["conv1"].local_sqnr_db, rel_tol=1e-9)
    # deeper layers accumulate upstream error
    assert rows["fc"].sqnr_db < rows["fc"].local_sqnr_db
    for r in rows.values():
        assert 20 < r.sqnr_db < 60 and math.isclose(r.rel_err, 10 ** (-r.sqnr_db / 20), rel_tol=1e-6)
    text = format_table(rep.layer_errors)
    assert text.splitlines()[0].split()[:4] == ["layer", "op", "SQNR", "dB"] and "residual" in text
    j = rep.to_json()
    assert j["layer_errors"][0]["layer"] == "conv1" and j["metric"] == "top1"


def test_output_metrics():
    f = [[np.array([[1.0, 0.0], [0.0, 1.0]])]]
    q = [[np.array([[0.9, 0.0], [1.0, 0.0]])]]
    assert output_metric(f, q) == ("top1", 0.5)
    name, v = output_metric(f, q, "relative_error")
    assert name == "relative_error" and math.isclose(v, np.linalg.norm(f[0][0] - q[0][0]) / np.linalg.norm(f[0][0]))
    assert output_metric([[np.ones((2, 3, 4))]], [[np.ones((2, 3, 4))]])[0] == "relative_error"
