"""ONNX export of graphs: Add and Concat, batch norm folded inside branches and shortcuts, parity with
the engine in onnxruntime (1e-5) at batch 1, 7 and 256, folded and not (tests/test_export.py's helpers:
a few SGD steps, then random batch-norm statistics)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_export import assert_parity, ops, trained_net

from dnnspec import frontend
from dnnspec.export.onnx_export import BATCH_DIM, to_onnx

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parent.parent


def spec(input_line: str, body: str, tail: str = "") -> str:
    return f"{input_line}\nclasses 3\nlayers {{\n{body}}}\n{tail}"


IMG = "input image[2, 8, 8] scale=1/255"
CASES = {
    "residual_identity": (IMG + "\nnormalize auto", "  conv2d 4 kernel=3 padding=same\n  relu\n  residual {\n"
                          "    conv2d 4 kernel=3 padding=same bias=false\n    batchnorm\n    relu\n"
                          "    conv2d 4 kernel=3 padding=same\n    batchnorm\n  }\n  relu\n  global_avgpool\n"
                          "  dense 3\n  softmax\n"),
    "residual_projection": (IMG, "  conv2d 4 kernel=3 padding=same\n  batchnorm\n  relu\n  residual {\n"
                            "    conv2d 6 kernel=3 stride=2 padding=same bias=false\n    batchnorm\n    relu\n"
                            "    conv2d 6 kernel=3 padding=same bias=false\n    batchnorm\n    shortcut {\n"
                            "      conv2d 6 kernel=1 stride=2 bias=false\n      batchnorm\n    }\n  }\n  relu\n"
                            "  flatten\n  dense 3\n  softmax\n"),
    "residual_mlp": ("input [6]\nnormalize auto", "  dense 8\n  elu\n  residual {\n    dense 8\n    batchnorm\n"
                     "    tanh\n    dense 8\n    batchnorm\n  }\n  batchnorm\n  dense 3\n  softmax\n"),
    "input_read_twice": ("input [6] scale=0.5\nnormalize auto", "  dense 8\n  tanh\n  dense 8 from=input\n"
                         "  add tanh1, dense2\n  dense 3\n  softmax\n"),
    "add_three": ("input [6]", "  dense 5 name=a\n  batchnorm\n  dense 5 from=input name=b\n  relu\n"
                  "  dense 5 from=a name=c\n  add bn1, relu1, c\n  batchnorm\n  relu\n  dense 3\n  softmax\n"),
    "concat_vectors": ("input [6]", "  dense 5 name=a\n  batchnorm\n  dense 2 from=input\n  elu\n"
                       "  concat bn1, elu1, input\n  dense 3\n  softmax\n"),
    "concat_images": (IMG, "  conv2d 4 kernel=3 padding=same\n  relu name=stem\n  conv2d 2 kernel=1\n  batchnorm\n"
                      "  conv2d 3 kernel=3 padding=same from=stem\n  leaky_relu alpha=0.1\n"
                      "  maxpool 3 stride=1 padding=1 from=stem\n  concat bn1, leaky_relu1, maxpool1\n"
                      "  maxpool 2\n  flatten\n  dense 3\n  softmax\n"),
    "fan_out_three": ("input [6]", "  dense 5\n  batchnorm\n  sigmoid name=t\n  dense 5\n  dense 5 from=t\n  elu\n"
                      "  dense 5 from=t\n  add dense2, elu1, dense4, t\n  dense 3\n  softmax\n"),
    "dropout_scale_branch": ("input [6]", "  dense 5\n  dropout 0.3 mode=scale name=d\n  dense 5\n  add d, dense2\n"
                             "  dense 3\n  softmax\n"),
}


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_graph_parity_with_onnxruntime(case, fold):
    input_line, body = CASES[case]
    model = frontend.parse(spec(input_line, body))
    assert not model.is_chain
    net = trained_net(model)
    proto = to_onnx(model, net.params, fold=fold)  # runs the full checker and strict shape inference
    kinds = ops(proto)
    assert ("BatchNormalization" in kinds) == (not fold and any(la.kind == "batchnorm" for la in model.layers))
    assert kinds.count("Add") >= sum(len(la.inputs) - 1 for la in model.layers if la.kind == "add")
    assert kinds.count("Concat") == sum(la.kind == "concat" for la in model.layers)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == BATCH_DIM  # the batch stays symbolic
    assert_parity(net, proto)


def test_batch_norm_folds_into_the_convs_of_body_and_shortcut():
    model = frontend.parse(spec(*CASES["residual_projection"]))
    proto = to_onnx(model, trained_net(model).params)
    assert ops(proto) == ["Conv", "Relu", "Conv", "Relu", "Conv", "Conv", "Add", "Relu", "Flatten", "Gemm",
                          "Softmax"]
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert list(add.input) == ["conv3", "conv4"] and add.output[0] == "add1"


def test_an_open_gemm_read_by_two_layers_is_written_once():
    model = frontend.parse(spec("input [6]", "  dense 5 name=a\n  tanh\n  dense 5 from=a\n  add tanh1, dense2\n"
                                "  dense 3\n  softmax\n"))
    proto = to_onnx(model, trained_net(model).params)
    assert ops(proto) == ["Gemm", "Tanh", "Gemm", "Add", "Gemm", "Softmax"]


@pytest.mark.parametrize("name", ["fashion_resnet", "digits_inception", "spirals_resmlp"])
def test_the_graph_specs_export_with_parity(name):
    model = frontend.load(ROOT / "specs" / f"{name}.dnn")
    net = trained_net(model, n=16)
    proto = to_onnx(model, net.params)
    assert "BatchNormalization" not in ops(proto)
    assert_parity(net, proto)
