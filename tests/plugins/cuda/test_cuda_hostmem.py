"""Host buffers of the emulated kernels (hostmem.py): numeric arrays land on a 64-byte boundary;
arrays of references (string tensors, read only by host nodes) are copied as NumPy arrays, since
NumPy cannot view raw bytes as references."""
import numpy as np
import pytest

from cuda_harness import needs_emu
from plugins.cuda.hostmem import aligned_copy, aligned_empty, buffer_copy, exact_empty


def _at_each_offset(n):
    """Object arrays of ``n`` items starting 0..7 items into a larger one: one of each residue
    of their address mod 64, so some are off the 64-byte boundary whatever NumPy's allocation."""
    base = np.array([f"s{i}" for i in range(n + 8)], dtype=object)
    return [base[k:k + n] for k in range(8)]


def test_object_arrays_are_copied_not_viewed():
    for n in (0, 3):
        for a in _at_each_offset(n):
            for copy in (aligned_copy, buffer_copy):
                got = copy(a)
                assert got.dtype == object and got.shape == a.shape and list(got) == list(a)
    assert exact_empty((2, 0), object).shape == (2, 0) and aligned_empty((2, 3), object).dtype == object


def test_numeric_buffers_stay_aligned():
    a = np.arange(17, dtype=np.float32)[1:]
    got = aligned_copy(a)
    assert got.ctypes.data % 64 == 0 and np.array_equal(got, a)


@needs_emu
def test_string_input_of_a_model_on_kernels_alone():
    """RegexFullMatch of an empty string tensor folds to a constant, so the model runs on
    kernels alone with the string tensor still an input: the run copies it into the inputs'
    buffers, wherever its data starts (this crashed ONNX's node test
    test_regex_full_match_empty on cuda-emu, depending on the input's address)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import graphopt

    node = helper.make_node("RegexFullMatch", ["X"], ["Y"], pattern=r"www\.[\w.-]+\.\bcom\b")
    graph = helper.make_graph([node], "regex", [helper.make_tensor_value_info("X", TensorProto.STRING, (2, 0))],
                              [helper.make_tensor_value_info("Y", TensorProto.BOOL, (2, 0))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    exe = graphopt.compile(model, backend="cuda-emu")
    assert not exe.stats.get("host_nodes")
    for a in _at_each_offset(0):
        (got,) = exe.run({"X": a.reshape(2, 0)})
        assert got.dtype == np.bool_ and got.shape == (2, 0)
