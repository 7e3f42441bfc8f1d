"""Import -> export keeps names, types, metadata and numbers; the result passes the
full checker and runs in onnxruntime with the same outputs as before."""
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import GraphBuilder
from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.onnx_io import from_onnx_model, load_onnx, save_onnx, to_onnx_model
from graphopt.ops.registry import get_schema
from graphopt.plugins.cpu import run_reference


def has_kernel(op):
    s = get_schema(op)
    return s is not None and s.kernel is not None


def check(m):
    onnx.checker.check_model(m, full_check=True)
    return m


def test_builder_graph_round_trip_matches_reference_and_onnxruntime(ort_run):
    b = GraphBuilder("mlp", opset=17)
    x = b.input("x", ("batch", 4))
    w = b.const(np.linspace(-1, 1, 4, dtype=np.float32), "w")
    h = b.op("Relu", b.op("Mul", x, w, name="scale"))
    y = b.op("Add", b.op("Sigmoid", h), x)
    b.output(y, "y")
    m = check(to_onnx_model(b.graph))
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["y"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert {vi.name for vi in m.graph.value_info} >= {h.name}  # intermediates keep their types
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    want = run_reference(b.graph, feeds)[0]
    np.testing.assert_allclose(ort_run(m, feeds)[0], want, rtol=1e-5, atol=1e-6)
    g2 = load_onnx(m.SerializeToString())
    np.testing.assert_allclose(run_reference(g2, feeds)[0], want, rtol=1e-6)
    assert [n.name for n in g2] == [n.name for n in b.graph]
    assert g2.inputs[0].type.shape == ("batch", 4) and g2.outputs[0].type.shape == ("batch", 4)


def test_conv_gemm_model_round_trips_through_a_file(tmp_path, conv_net, ort_run):
    src = tmp_path / "net.onnx"
    onnx.save(conv_net, src)
    g = load_onnx(src)
    assert [(n.name, n.op_type) for n in g] == [("conv1", "Conv"), ("relu1", "Relu"), ("flat", "Flatten"),
                                                 ("fc", "Gemm")]
    assert g.inputs[0].type.shape == ("N", 3, 6, 6)
    assert g.outputs[0].type.shape == ("N", 5)
    assert [v.type.shape for v in g.nodes[0].outputs] == [("N", 4, 6, 6)]  # from shape inference
    assert g.nodes[0].attrs == {"pads": [1, 1, 1, 1]} and g.nodes[3].attrs == {"transB": 1, "alpha": 0.5}
    out = save_onnx(g, tmp_path / "out.onnx")
    m2 = check(onnx.load(out))
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(conv_net, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert m2.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    gemm = m2.graph.node[3]
    assert {a.name: a.type for a in gemm.attribute} == {"transB": onnx.AttributeProto.INT,
                                                         "alpha": onnx.AttributeProto.FLOAT}
    assert sorted(p.name for p in m2.graph.initializer) == ["B", "C", "G", "W"]
    for t in m2.graph.initializer:
        want = next(i for i in conv_net.graph.initializer if i.name == t.name)
        np.testing.assert_array_equal(numpy_helper.to_array(t), numpy_helper.to_array(want))
    assert not list(tmp_path.glob(".*tmp"))
    if all(has_kernel(op) for op in ("Conv", "Relu", "Flatten", "Gemm")):
        np.testing.assert_allclose(run_reference(g, {"x": x})[0], ort_run(conv_net, {"x": x})[0], rtol=1e-4,
                                   atol=1e-5)


def test_metadata_opsets_and_names_are_kept(conv_net):
    conv_net.metadata_props.add(key="author", value="me")
    conv_net.opset_import.append(helper.make_opsetid("com.example", 3))
    conv_net.graph.doc_string = "graph doc"
    conv_net.graph.node[1].doc_string = "node doc"
    g = from_onnx_model(conv_net)
    assert g.opset_imports == {"": 17, "com.example": 3}
    assert g.metadata == {"author": "me"} and g.doc_string == "a conv net" and g.name == "g"
    assert g.model_info["producer_name"] == "unit-test" and g.model_info["ir_version"] == 8
    assert g.model_info["model_version"] == 7 and g.model_info["domain"] == "org.example"
    m = check(to_onnx_model(g))
    assert {(o.domain, o.version) for o in m.opset_import} == {("", 17), ("com.example", 3)}
    assert m.producer_name == "graphopt" and m.doc_string == "a conv net" and m.graph.doc_string == "graph doc"
    assert m.model_version == 7 and m.domain == "org.example" and m.graph.name == "g"
    props = {p.key: p.value for p in m.metadata_props}
    assert props == {"author": "me", "graphopt.original_producer": "unit-test 1.2"}
    assert m.graph.node[1].doc_string == "node doc"
    assert [n.name for n in m.graph.node] == ["conv1", "relu1", "flat", "fc"]


@pytest.mark.parametrize("opset,ir", [(11, 6), (13, 7), (15, 8), (17, 8), (19, 9), (21, 10), (22, 10)])
def test_ir_version_is_the_smallest_the_opset_needs_and_onnxruntime_loads_it(opset, ir, make_model, vi, ort_run):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=opset,
                   ir_version=onnx.IR_VERSION)  # onnx's default: too new for onnxruntime
    out = check(to_onnx_model(from_onnx_model(m)))
    assert out.ir_version == ir
    np.testing.assert_array_equal(ort_run(out, {"x": np.array([-1, 2], np.float32)})[0], [0, 2])


def test_unsorted_nodes_are_sorted_and_empty_names_made_unique(make_model, vi):
    nodes = [helper.make_node("Sigmoid", ["a"], ["y"]),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Neg", ["r"], ["a"]),
             helper.make_node("Relu", ["x"], ["unused"], name="dup"),
             helper.make_node("Relu", ["unused"], ["unused2"], name="dup")]
    g = from_onnx_model(make_model(nodes, [vi("x", [3])], [vi("y", [3])]))
    assert [n.op_type for n in g][:3] == ["Relu", "Neg", "Sigmoid"]
    names = [n.name for n in g]
    assert len(set(names)) == len(names) and all(names) and "dup" in names
    g.verify()
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_allclose(run_reference(g, {"x": x})[0], 1 / (1 + np.exp(np.maximum(x, 0))), rtol=1e-6)
    check(to_onnx_model(g))


def test_initializer_listed_as_input_becomes_a_constant(make_model, vi, ort_run):
    w = np.array([1, 2, 3], np.float32)
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [3]), vi("w", [3])], [vi("y", [3])],
                   {"w": w}, ir_version=3, opset=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opset 9 is old
        g = from_onnx_model(m)
    assert [v.name for v in g.inputs] == ["x"] and g.initializers["w"].const.tolist() == [1, 2, 3]
    assert g.meta["onnx_initializer_inputs"] == ["w"]
    out = check(to_onnx_model(g))
    assert [i.name for i in out.graph.input] == ["x"] and out.ir_version == 4
    np.testing.assert_array_equal(ort_run(out, {"x": np.zeros(3, np.float32)})[0], w)


def test_half_precision_initializers_decode_exactly(make_model, vi):
    import ml_dtypes

    bf = np.array([1.5, -2.25, 3e38], dtype=ml_dtypes.bfloat16)
    hf = np.array([0.1, 65504, -1e-4], dtype=np.float16)
    m = make_model([helper.make_node("Identity", ["b"], ["y"]), helper.make_node("Identity", ["h"], ["z"])],
                   [], [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [3]),
                        helper.make_tensor_value_info("z", TensorProto.FLOAT16, [3])],
                   [numpy_helper.from_array(bf, "b"), numpy_helper.from_array(hf, "h")])
    g = from_onnx_model(m)
    assert g.initializers["b"].const.dtype == ml_dtypes.bfloat16 and g.initializers["b"].type.dtype == "bfloat16"
    np.testing.assert_array_equal(g.initializers["b"].const.view(np.uint16), bf.view(np.uint16))
    np.testing.assert_array_equal(g.initializers["h"].const, hf)
    out = check(to_onnx_model(g))
    back = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(back["b"].view(np.uint16), bf.view(np.uint16))
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.BFLOAT16


def test_constant_nodes_stay_nodes_with_array_attributes(make_model, vi, ort_run):
    c = helper.make_tensor("", TensorProto.FLOAT, [2], [10.0, 20.0])
    nodes = [helper.make_node("Constant", [], ["c"], value=c, name="k"),
             helper.make_node("Constant", [], ["s"], value_ints=[1, 2], name="k2"),
             helper.make_node("Add", ["x", "c"], ["y"])]
    m = make_model(nodes, [vi("x", [2])], [vi("y", [2])])
    g = from_onnx_model(m)
    k = g.nodes[0]
    assert k.op_type == "Constant" and isinstance(k.attrs["value"], np.ndarray)
    assert k.attrs["value"].tolist() == [10.0, 20.0] and g.nodes[1].attrs == {"value_ints": [1, 2]}
    out = check(to_onnx_model(g))
    np.testing.assert_array_equal(ort_run(out, {"x": np.ones(2, np.float32)})[0], [11, 21])


def test_attribute_types_survive_passes_that_store_python_values(make_model, vi, ort_run):
    m = make_model([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.5, name="lr")],
                   [vi("x", [2])], [vi("y", [2])])
    g = from_onnx_model(m)
    g.nodes[0].attrs["alpha"] = 2  # a pass writing an int where ONNX wants FLOAT
    out = check(to_onnx_model(g))
    assert out.graph.node[0].attribute[0].type == onnx.AttributeProto.FLOAT
    np.testing.assert_array_equal(ort_run(out, {"x": np.array([-1, 1], np.float32)})[0], [-2, 1])


def test_unknown_ops_import_opaque_keep_attr_types_and_fail_only_when_run(make_model, vi):
    node = helper.make_node("Frob", ["x"], ["a", "", "b"], domain="com.example", name="frob",
                            scale=[1.0, 2.0], mode="fast", k=3, w=helper.make_tensor("", 1, [1], [0.5]))
    node.attribute.append(helper.make_attribute("ids", [], attr_type=onnx.AttributeProto.INTS))
    node.attribute.append(helper.make_attribute("none", [], attr_type=onnx.AttributeProto.FLOATS))
    m = make_model([node], [vi("x", [2])], [vi("a", [2]), vi("b", [2])], extra_opsets=[("com.example", 2)])
    g = from_onnx_model(m)
    n = g.nodes[0]
    assert n.qualified_op == "com.example::Frob" and n.attrs["mode"] == "fast" and n.attrs["scale"] == [1.0, 2.0]
    assert len(n.outputs) == 3 and n.outputs[1].meta["onnx_omitted"]
    with pytest.raises(UnsupportedOpError, match="com.example::Frob.*frob"):
        run_reference(g, {"x": np.zeros(2, np.float32)})
    out = to_onnx_model(g)
    check(out)
    on = out.graph.node[0]
    assert list(on.output) == ["a", "", "b"] and on.domain == "com.example"
    types = {a.name: a.type for a in on.attribute}
    A = onnx.AttributeProto
    assert types == {"scale": A.FLOATS, "ids": A.INTS, "none": A.FLOATS, "mode": A.STRING, "k": A.INT,
                     "w": A.TENSOR}
    assert ("com.example", 2) in {(o.domain, o.version) for o in out.opset_import}


def test_fused_ops_need_keep_fused(make_model, vi):
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    y = b.graph.make_node("FusedThing", [x], {"act": "relu"}, domain="ai.graphopt", name="fused0").output
    b.output(y, "y")
    with pytest.raises(GraphoptError, match="fused0.*keep_fused"):
        to_onnx_model(b.graph)
    m = to_onnx_model(b.graph, keep_fused=True)
    assert ("ai.graphopt", 1) in {(o.domain, o.version) for o in m.opset_import}


def test_target_opset_converts_or_says_why_not(conv_net, ort_run):
    conv_net.opset_import[0].version = 13
    g = from_onnx_model(conv_net)
    m = check(to_onnx_model(g, target_opset=18))
    assert {o.version for o in m.opset_import if o.domain == ""} == {18} and m.ir_version == 8
    x = np.ones((1, 3, 6, 6), np.float32)
    np.testing.assert_allclose(ort_run(m, {"x": x})[0], ort_run(conv_net, {"x": x})[0], rtol=1e-5)
    g.opset_imports[""] = 17
    with pytest.raises(GraphoptError, match="cannot convert the model from opset 17 to opset 9"):
        to_onnx_model(g, target_opset=9)


def test_old_opset_warns_and_ancient_opset_is_refused(make_model, vi):
    from graphopt.errors import ModelLoadError

    relu = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.warns(UserWarning, match="opset 9"):
        from_onnx_model(make_model(relu, [vi("x", [2])], [vi("y", [2])], opset=9, ir_version=4))
    # Relu is the same op at opset 6 and 7: the model reads as opset 7
    g = from_onnx_model(make_model(relu, [vi("x", [2])], [vi("y", [2])], opset=6, ir_version=3))
    assert g.opset_imports[""] == 7
    # Add took numpy broadcasting at opset 7: an opset-6 Add is refused by name
    add = [helper.make_node("Add", ["x", "x"], ["y"], name="a")]
    with pytest.raises(ModelLoadError, match=r"opset 6 is too old: Add \(node 'a', redefined at opset 7\)"):
        from_onnx_model(make_model(add, [vi("x", [2])], [vi("y", [2])], opset=6, ir_version=3))


def test_model_local_functions_and_type_attributes_are_written_back(make_model, vi, ort_run):
    fn = helper.make_function("com.example", "Swish", ["X"], ["Y"],
                              [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])],
                              [helper.make_opsetid("", 17)])
    opt_type = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    nodes = [helper.make_node("Swish", ["x"], ["y"], domain="com.example", name="swish"),
             helper.make_node("Optional", [], ["o"], type=opt_type.optional_type.elem_type, name="none"),
             helper.make_node("OptionalHasElement", ["o"], ["has"])]
    m = make_model(nodes, [vi("x", [2])], [vi("y", [2]), vi("has", [], TensorProto.BOOL)],
                   extra_opsets=[("com.example", 1)], functions=[fn])
    g = from_onnx_model(m)
    assert "type" in g.nodes[1].meta["onnx_raw_attrs"] and "type" not in g.nodes[1].attrs
    out = check(to_onnx_model(g))
    assert [f.name for f in out.functions] == ["Swish"] and out.ir_version == 8
    assert out.graph.node[1].attribute[0].type == onnx.AttributeProto.TYPE_PROTO
    x = np.array([-1, 2], np.float32)
    y, has = ort_run(out, {"x": x})
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)), rtol=1e-6)
    assert not has


def test_sparse_initializers_and_constants_are_densified(make_model, vi, ort_run):
    vals = numpy_helper.from_array(np.array([5, 7], np.float32), "sp")
    idx = numpy_helper.from_array(np.array([1, 3], np.int64), "sp_idx")
    sp = helper.make_sparse_tensor(vals, idx, [4])
    cvals = numpy_helper.from_array(np.array([1], np.float32), "")
    cidx = numpy_helper.from_array(np.array([[0]], np.int64), "")
    nodes = [helper.make_node("Constant", [], ["c"], sparse_value=helper.make_sparse_tensor(cvals, cidx, [4])),
             helper.make_node("Add", ["x", "sp"], ["a"]), helper.make_node("Add", ["a", "c"], ["y"])]
    m = make_model(nodes, [vi("x", [4])], [vi("y", [4])])
    m.graph.sparse_initializer.append(sp)
    g = from_onnx_model(m)
    assert g.initializers["sp"].const.tolist() == [0, 5, 0, 7]
    assert g.nodes[0].attrs["value"].tolist() == [1, 0, 0, 0]
    if has_kernel("Constant"):  # the shape-op kernels are written separately
        np.testing.assert_array_equal(run_reference(g, {"x": np.zeros(4, np.float32)})[0], [1, 5, 0, 7])
    out = check(to_onnx_model(g))
    np.testing.assert_array_equal(ort_run(out, {"x": np.zeros(4, np.float32)})[0], [1, 5, 0, 7])


def test_infer_shapes_off_keeps_only_declared_types(conv_net):
    g = from_onnx_model(conv_net, infer_shapes=False)
    assert g.nodes[0].output.type is None and g.outputs[0].type.shape == ("N", 5)


def test_every_common_dtype_and_scalars_round_trip_bit_exactly(make_model, vi):
    arrays = {"b": np.array([True, False]), "i8": np.array([-128, 127], np.int8), "u64": np.array([2 ** 63], np.uint64),
              "f64": np.array(3.25), "s": np.array([["a", "é"], ["", "\udcff"]], dtype=object),
              "e": np.zeros((0, 3), np.float32)}
    nodes = [helper.make_node("Identity", [k], [f"{k}_out"]) for k in arrays]
    outs = [helper.make_tensor_value_info(f"{k}_out", helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype)
                                          if a.dtype != object else TensorProto.STRING, a.shape)
            for k, a in arrays.items()]
    inits = [numpy_helper.from_array(a, k) for k, a in arrays.items() if k != "s"]
    s = TensorProto(name="s", data_type=TensorProto.STRING, dims=[2, 2])
    s.string_data.extend([b"a", "é".encode(), b"", b"\xff"])
    g = from_onnx_model(make_model(nodes, [], outs, inits + [s]))
    for k, a in arrays.items():
        got = g.initializers[k].const
        assert got.dtype == a.dtype and got.shape == a.shape and got.tolist() == a.tolist(), k
    out = check(to_onnx_model(g))
    back = {t.name: t for t in out.graph.initializer}
    assert list(back["s"].string_data) == list(s.string_data)
    for k, a in arrays.items():
        if k != "s":
            assert numpy_helper.to_array(back[k]).tolist() == a.tolist(), k
