"""samples/digits_int8.py end to end (short training): int8 accuracy within 1 point of
float32, onnxruntime's run of the QDQ model within one step of graphopt's int8 run."""
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")


def test_digits_int8_sample(tmp_path, capsys):
    from samples.digits_int8 import main

    code = main(["--epochs", "8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    acc = re.search(r"float32 ([\d.]+)%\s+int8 ([\d.]+)%", out)
    assert acc, out
    f32, i8 = map(float, acc.groups())
    assert f32 > 90 and abs(f32 - i8) <= 1.0, out
    steps = [int(s) for s in re.findall(r"max difference (\d+) quantization step", out)]
    assert len(steps) == 2 and max(steps) <= 1, out
    assert "ai.graphopt::QConv" in out and "SQNR dB" in out
    assert code == 0
    assert (tmp_path / "digits.int8.onnx").exists()
