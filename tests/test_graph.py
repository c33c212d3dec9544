"""Graph networks: residual blocks, from=, add and concat, from the text to the engine's gradients.

Gradients are checked against centred finite differences in float64 (tests/gradcheck.py)
through every graph construct. The networks use smooth activations (tanh, elu) and no bias
before a batch norm (whose true gradient is 0), so that the relative error measures the
engine, not kinks or round-off.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradcheck import net_gradients, rel_error
from test_frontend import _comparable  # the IR without spans and paths, as render round trips compare it

from dnnspec import checkpoint, frontend, ir, memory, registry, summary
from dnnspec.cli import main
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
GRAPH_SPECS = ("fashion_resnet", "digits_inception", "spirals_resmlp")


@pytest.fixture(autouse=True)
def _fixed_memory_limit(monkeypatch):
    monkeypatch.setenv("DNNSPEC_MEMORY_LIMIT", "16GiB")


def spec(input_line: str, body: str, classes: int = 3) -> str:
    """A spec around a layers body (two-space indented lines)."""
    return f"{input_line}\nclasses {classes}\nlayers {{\n{body}}}\n"


def wiring(model: ir.Model) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(la.name, la.kind, la.inputs) for la in model.layers]


# --- the IR -----------------------------------------------------------------------------


def test_layers_made_without_inputs_form_a_chain():
    layer = ir.Layer("d", "dense", ir.FrozenDict(), (4,), (3,))
    assert layer.inputs == () and layer.in_shapes == ((4,),)
    model = ir.model_from_layers((4,), [("dense", {"units": 3}), ("softmax", {})])
    assert [la.inputs for la in model.layers] == [("input",), ("dense1",)] and model.is_chain
    assert model.consumers == {"input": ("dense1",), "dense1": ("softmax1",), "softmax1": ()}


def test_model_from_layers_builds_graphs_by_name():
    model = ir.model_from_layers((4,), [("dense", {"units": 5, "name": "a"}), ("tanh", {}),
                                        ("dense", {"units": 5, "from": "a"}), ("add", {"inputs": ["tanh1", "dense2"]}),
                                        ("dense", {"units": 3}), ("softmax", {})])
    assert not model.is_chain
    assert model.layer("add1").inputs == ("tanh1", "dense2") and model.layer("add1").in_shapes == ((5,), (5,))
    assert model.consumers["a"] == ("tanh1", "dense2")
    assert model.layer("add1").flops == 5  # one addition per element for two inputs
    with pytest.raises(ValueError, match="reads 'nope'"):
        ir.model_from_layers((4,), [("dense", {"units": 3, "from": "nope"})])


def test_the_join_kinds_shape_rules():
    add, concat = registry.KINDS["add"], registry.KINDS["concat"]
    assert add.inputs == concat.inputs == registry.MANY and registry.takes_many("add")
    assert add.shape({}, [(3, 4, 4)] * 3) == (3, 4, 4) and add.flops({}, [(3, 4, 4)] * 3, (3, 4, 4)) == 2 * 48
    assert concat.shape({}, [(2, 4, 4), (3, 4, 4)]) == (5, 4, 4) and concat.shape({}, [(2,), (7,)]) == (9,)
    with pytest.raises(registry.InputMismatch) as info:
        add.shape({}, [(3,), (3,), (4,)])
    assert (info.value.first, info.value.second) == (0, 2)
    assert info.value.named(["a", "b", "c"]).message == "add needs inputs of one shape, but 'a' has shape [3] and " \
                                                         "'c' has shape [4]"
    with pytest.raises(registry.InputMismatch, match="all images or all vectors"):
        concat.shape({}, [(2, 4, 4), (32,)])


def test_default_init_follows_the_output_not_the_next_line():
    """b1 feeds concat -> tanh: xavier (tanh's); b2 (on the next line, feeding the same concat) too;
    the stem's dense feeds relu: he."""
    model = frontend.parse(spec("input [4]", "  dense 6\n  relu name=stem\n  dense 4 name=b1\n"
                                "  dense 4 from=stem name=b2\n  concat b1, b2\n  tanh\n  dense 3\n  softmax\n"))
    inits = {la.name: la.options.get("init") for la in model.layers if la.kind == "dense"}
    assert inits == {"dense1": "he_normal", "b1": "xavier_normal", "b2": "xavier_normal", "dense4": "xavier_normal"}
    relu = frontend.parse(spec("input [4]", "  dense 6 name=a\n  dense 6 from=input\n  add a, dense2\n  relu\n"
                               "  dense 3\n  softmax\n"))
    assert relu.layer("a").options["init"] == "he_normal"  # dense -> add -> relu (the next line is a dense)


# --- the language -----------------------------------------------------------------------

RESIDUAL = """  conv2d 4 kernel=3 padding=same
  relu
  residual {
    conv2d 4 kernel=3 padding=same bias=false
    batchnorm
  }
  relu
  residual name=down {
    conv2d 8 kernel=3 stride=2 padding=same bias=false
    batchnorm
    shortcut {
      conv2d 8 kernel=1 stride=2 bias=false
      batchnorm
    }
  }
  global_avgpool
  dense 3
  softmax
"""


def test_residual_blocks_expand_to_body_shortcut_and_add():
    model = frontend.parse(spec("input image[1, 8, 8]", RESIDUAL))
    assert wiring(model) == [
        ("conv1", "conv2d", ("input",)), ("relu1", "relu", ("conv1",)),
        ("conv2", "conv2d", ("relu1",)), ("bn1", "batchnorm", ("conv2",)), ("add1", "add", ("bn1", "relu1")),
        ("relu2", "relu", ("add1",)),
        ("conv3", "conv2d", ("relu2",)), ("bn2", "batchnorm", ("conv3",)),
        ("conv4", "conv2d", ("relu2",)), ("bn3", "batchnorm", ("conv4",)), ("down", "add", ("bn2", "bn3")),
        ("gap1", "global_avgpool", ("down",)), ("dense1", "dense", ("gap1",)), ("softmax1", "softmax", ("dense1",))]
    assert model.layer("down").out_shape == (8, 4, 4)
    assert model.layer("add1").span.line == 6 and model.layer("down").span.line == 11  # the 'residual' heads


def test_repeat_suffixes_names_and_the_references_to_them():
    text = spec("input [4]", "  dense 6\n  tanh name=x\n  repeat 2 {\n    dense 6 name=h\n    tanh name=t\n"
                "    dense 6 from=h name=u\n    add t, u, x, dense1\n  }\n  dense 3\n  softmax\n")
    model = frontend.parse(text)
    assert [(la.name, la.inputs) for la in model.layers if la.kind == "add"] == [
        ("add1", ("t_1", "u_1", "x", "dense1")), ("add2", ("t_2", "u_2", "x", "dense1"))]  # outside: not suffixed
    assert model.layer("u_2").inputs == ("h_2",)
    assert model.layer("h_2").inputs == ("add1",)  # a copy reads the one before it


def test_residual_in_repeat_with_from_and_nested_blocks():
    text = spec("input [4]", "  dense 6 name=a\n  tanh\n  repeat 2 {\n    residual from=a name=r {\n"
                "      dense 6\n      residual {\n        dense 6\n      }\n    }\n  }\n"
                "  add r_1, r_2, tanh1\n  dense 3\n  softmax\n")
    model = frontend.parse(text)
    assert wiring(model)[2:8] == [
        ("dense2", "dense", ("a",)), ("dense3", "dense", ("dense2",)), ("add1", "add", ("dense3", "dense2")),
        ("r_1", "add", ("add1", "a")), ("dense4", "dense", ("a",)), ("dense5", "dense", ("dense4",))]
    assert model.layers[-3].inputs == ("r_1", "r_2", "tanh1")  # add5: named layers count toward <kind><n> too
    with pytest.raises(SpecError, match="output of layer 'tanh1' is not used"):  # from=a skips tanh1
        frontend.parse(text.replace("add r_1, r_2, tanh1", "add r_1, r_2"))


def test_shortcut_block_reads_the_block_input_even_behind_nested_blocks():
    text = spec("input [4]", "  dense 6\n  residual {\n    dense 6\n    tanh\n    shortcut {\n"
                "      residual {\n        dense 6\n      }\n      dense 6\n    }\n  }\n  dense 3\n  softmax\n")
    model = frontend.parse(text)
    assert wiring(model)[1:7] == [
        ("dense2", "dense", ("dense1",)), ("tanh1", "tanh", ("dense2",)),
        ("dense3", "dense", ("dense1",)), ("add1", "add", ("dense3", "dense1")),
        ("dense4", "dense", ("add1",)), ("add2", "add", ("tanh1", "dense4"))]


def test_the_residual_hint_is_a_shortcut_that_fixes_the_block():
    path = ROOT / "specs" / "broken" / "residual_needs_shortcut.dnn"
    with pytest.raises(SpecError) as info:
        frontend.load(path)
    hint = info.value.diagnostics[0].hint
    fix = hint.split(": ", 1)[1].split(" (")[0]
    assert fix == "shortcut { conv2d 64 kernel=1 stride=2 }"
    fixed = path.read_text().replace("    batchnorm\n  }\n  relu\n  global", f"    batchnorm\n    {fix}\n  }}\n"
                                                                             "  relu\n  global")
    assert frontend.parse(fixed).layer("add1").out_shape == (64, 14, 14)


@pytest.mark.parametrize("body, message", [
    ("  dense 4 name=a\n  add a, a from=a\n  dense 3\n  softmax\n", "add takes no from="),
    ("  dense 4 name=a\n  add a, 3\n  dense 3\n  softmax\n", "add joins layers by name, found 3"),
    ("  dense 4 from=[a]\n  dense 3\n  softmax\n", "from= needs a layer name"),
    ("  dense 4 from=input from=input\n  dense 3\n  softmax\n", "option 'from' is given twice"),
    ("  residual 3 {\n    dense 4\n  }\n  dense 3\n  softmax\n", "'residual' takes no values"),
    ("  residual\n  dense 3\n  softmax\n", "'residual' needs a block"),
    ("  residual {\n    dense 4\n    shortcut { dense 4 }\n    shortcut { dense 4 }\n  }\n  dense 3\n  softmax\n",
     "a residual block has one shortcut"),
    ("  residual {\n    dense 4\n    shortcut {\n    }\n  }\n  dense 3\n  softmax\n",
     "the shortcut block has no layers"),
    ("  residual {\n    dense 4\n    shortcut 2 { dense 4 }\n  }\n  dense 3\n  softmax\n",
     "'shortcut' takes no values or options"),
    ("  residual {\n    dense 5\n  }\n  dense 3\n  softmax\n", "residual block: the body ends with shape [5]"),
    ("  dense 4 name=a\n  dense 5 from=input\n  concat input, dense2\n  tanh\n  dense 3\n  softmax\n",
     "output of layer 'a' is not used"),
])
def test_graph_mistakes_are_spec_errors(body, message):
    with pytest.raises(SpecError) as info:
        frontend.parse(spec("input [4]", body), "t.dnn")
    assert any(message in d.message for d in info.value.diagnostics), info.value.render()


def test_an_unknown_name_in_a_repeat_is_reported_once():
    text = spec("input [4]", "  repeat 3 {\n    dense 4 from=nope\n  }\n  dense 3\n  softmax\n")
    with pytest.raises(SpecError) as info:
        frontend.parse(text)
    assert [d.message for d in info.value.diagnostics] == ["no layer named 'nope' above this line"]


def test_residual_blocks_count_toward_the_layer_limit():
    text = spec("input [4]", "  repeat 1000 {\n    residual {\n      repeat 10 {\n        tanh\n      }\n"
                "    }\n  }\n  dense 3\n  softmax\n")
    with pytest.raises(SpecError, match="11,002 layers after expanding"):
        frontend.parse(text)


# --- check: render, summary, memory -------------------------------------------------------

CONSTRUCTS = {
    "from_input": spec("input [4]", "  dense 5\n  tanh\n  dense 5 from=input\n  add tanh1, dense2\n  dense 3\n"
                       "  softmax\n"),
    "add_three": spec("input [4]", "  dense 5 name=a\n  dense 5 from=input name=b\n  dense 5 from=input name=c\n"
                      "  add a, b, c\n  dense 3\n  softmax\n"),
    "concat_vectors": spec("input [4]", "  dense 5 name=a\n  dense 2 from=input\n  concat a, dense2, input\n"
                           "  dense 3\n  softmax\n"),
    "residual": spec("input image[1, 8, 8]", RESIDUAL),
    "quoted_name": spec("input [4]", '  dense 5 name="true"\n  dense 5 from=input\n  add "true", dense2\n'
                        "  dense 3\n  softmax\n"),
}


@pytest.mark.parametrize("text", [*CONSTRUCTS.values(), *((ROOT / "specs" / f"{n}.dnn").read_text()
                                                          for n in GRAPH_SPECS)],
                         ids=[*CONSTRUCTS, *GRAPH_SPECS])
def test_render_round_trip_of_graphs(text):
    model = frontend.parse(text)
    out = summary.render(model)
    again = frontend.parse(out)
    assert _comparable(again) == _comparable(model)
    assert wiring(again) == wiring(model) and not again.is_chain
    assert summary.render(again) == out


def test_render_writes_from_and_the_joined_names():
    out = summary.render(frontend.parse(CONSTRUCTS["from_input"]))
    assert "  dense 5 init=xavier_normal fan=avg bias=true name=dense2 from=input\n" in out
    assert "  add tanh1, dense2 name=add1\n" in out
    assert "residual" not in summary.render(frontend.parse(CONSTRUCTS["residual"]))  # expanded


def test_summary_gains_an_input_column_only_for_graphs():
    table = summary.summary(frontend.parse(CONSTRUCTS["residual"])).splitlines()
    assert table[1].split() == ["layer", "kind", "input", "output", "shape", "params", "init"]
    rows = {line.split()[0]: line for line in table[3:18]}
    assert rows["add1"].split()[2:4] == ["bn1,", "relu1"]
    assert rows["conv4"].split()[2] == "relu2"  # the shortcut reads the block's input
    assert rows["conv3"].split()[2] == "(8,"  # reads the line above: the column is empty
    chain = summary.summary(frontend.parse(spec("input [4]", "  dense 3\n  softmax\n")))
    assert "input " not in chain.splitlines()[1]


def test_parameter_and_flop_totals_of_a_graph():
    model = frontend.parse(CONSTRUCTS["add_three"])
    out = summary.summary(model)
    assert "trainable params:      93\n" in out  # 3 * (4*5 + 5) + (5*3 + 3)
    flops = 3 * (2 * 4 * 5 + 5) + 2 * 5 + (2 * 5 * 3 + 3) + 4 * 3  # three dense, two adds per element, head
    assert f"forward FLOPs/example: {flops}\n" in out


def test_memory_counts_the_gradient_sum_of_an_output_read_twice():
    one = frontend.parse(spec("input [4]", "  dense 50\n  tanh\n  dense 3\n  softmax\n"))
    two = frontend.parse(spec("input [4]", "  dense 50\n  tanh\n  dense 50\n  add tanh1, dense2\n  dense 3\n"
                              "  softmax\n"))
    part = {p.name: p for p in memory.estimate(two, batch=10).parts}
    base = {p.name: p for p in memory.estimate(one, batch=10).parts}
    assert part["tanh1"].activations - base["tanh1"].activations == memory.BYTES * 10 * 50


# --- the engine: gradients ---------------------------------------------------------------

IMG = "input image[2, 6, 6]"
GRAD_CASES = {
    "residual_identity": (IMG, "  conv2d 3 kernel=3 padding=same\n  tanh\n  residual {\n"
                               "    conv2d 3 kernel=3 padding=same bias=false\n    batchnorm\n    elu\n"
                               "    conv2d 3 kernel=3 padding=same\n  }\n  tanh\n  global_avgpool\n  dense 3\n"
                               "  softmax\n"),
    "residual_projection": (IMG, "  conv2d 3 kernel=3 padding=same\n  tanh\n  residual {\n"
                                 "    conv2d 4 kernel=3 stride=2 padding=same bias=false\n    batchnorm\n    tanh\n"
                                 "    conv2d 4 kernel=3 padding=same\n    shortcut {\n"
                                 "      conv2d 4 kernel=1 stride=2 bias=false\n      batchnorm\n    }\n  }\n"
                                 "  tanh\n  flatten\n  dense 3\n  softmax\n"),
    "residual_mlp": ("input [5]", "  dense 6\n  tanh\n  residual {\n    dense 6 bias=false\n    batchnorm\n"
                                  "    elu\n    dense 6\n  }\n  dense 3\n  softmax\n"),
    "add_three": ("input [5]", "  dense 4 name=a\n  tanh\n  dense 4 from=input name=b\n  dense 4 from=a name=c\n"
                               "  add tanh1, b, c\n  tanh\n  dense 3\n  softmax\n"),
    "concat_vectors": ("input [5]", "  dense 4 name=a\n  tanh\n  dense 3 from=input\n  elu\n"
                                    "  concat tanh1, elu1, input\n  dense 3\n  softmax\n"),
    "concat_images": (IMG, "  conv2d 3 kernel=3 padding=same\n  tanh name=stem\n  conv2d 2 kernel=1\n  tanh\n"
                           "  conv2d 2 kernel=3 padding=same from=stem\n  elu\n"
                           "  avgpool 3 stride=1 padding=1 from=stem\n"
                           "  concat tanh2, elu1, avgpool1\n  global_avgpool\n  dense 3\n  softmax\n"),
    "fan_out_three": ("input [5]", "  dense 4\n  tanh name=t\n  dense 4\n  dense 4 from=t\n  elu\n"
                                   "  dense 4 from=t\n  add dense2, elu1, dense4, t\n  dense 3\n  softmax\n"),
    "add_same_twice": ("input [5]", "  dense 4\n  tanh\n  add tanh1, tanh1\n  dense 3\n  softmax\n"),
}


@pytest.mark.parametrize("case", GRAD_CASES, ids=list(GRAD_CASES))
def test_finite_differences_through_graphs(case):
    input_line, body = GRAD_CASES[case]
    model = frontend.parse(spec(input_line, body))
    assert not model.is_chain
    net = Net(model, dtype=np.float64, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *model.input.shape))
    y = rng.integers(0, 3, 6)
    for name, (got, want) in net_gradients(net, x, y, net.trainable).items():
        assert rel_error(got, want) < 1e-6, name


def test_a_graph_whose_branches_compute_the_same_as_a_chain():
    """s -> (a, b) -> add with b's kernel equal to a's is the chain s -> a with a's kernel doubled: the same
    outputs, a's and b's gradients each equal to the doubled kernel's, and s's gradient (the sum of what
    its two readers send back) equal to the chain's."""
    graph = frontend.parse(spec("input [4]", "  dense 5 name=s\n  dense 3 name=a\n  dense 3 from=s name=b\n"
                                "  add a, b\n  softmax\n"))
    chain = frontend.parse(spec("input [4]", "  dense 5 name=s\n  dense 3 name=a\n  softmax\n"))
    g, c = Net(graph, dtype=np.float64), Net(chain, dtype=np.float64)
    c.params["s.kernel"][...], c.params["s.bias"][...] = g.params["s.kernel"], g.params["s.bias"]
    g.params["b.kernel"][...], g.params["b.bias"][...] = g.params["a.kernel"], g.params["a.bias"]
    c.params["a.kernel"][...], c.params["a.bias"][...] = 2 * g.params["a.kernel"], 2 * g.params["a.bias"]
    x = np.random.default_rng(1).normal(size=(5, 4))
    y = np.array([0, 1, 2, 1, 0])
    np.testing.assert_allclose(g.forward(x), c.forward(x), rtol=1e-12)
    _, gg = g.loss_and_grads(x, y)
    _, cg = c.loss_and_grads(x, y)
    for name in ("a.kernel", "b.kernel"):
        np.testing.assert_allclose(gg[name], cg["a.kernel"], rtol=1e-10)
    np.testing.assert_allclose(gg["s.kernel"], cg["s.kernel"], rtol=1e-10)


def test_chains_keep_the_chain_path_and_graphs_plan_segments():
    chain = Net(frontend.parse(spec("input [4]", "  dense 3\n  softmax\n")))
    assert chain.graph is None
    net = Net(frontend.parse(spec("input image[1, 8, 8]", RESIDUAL)))
    steps = [(st.op.name, st.ins, st.out) for st in net.graph.steps]
    assert steps[:5] == [("conv1", ("input",), "~conv1"), ("relu1", ("~conv1",), "relu1"),
                         ("conv2", ("relu1",), "~conv2"), ("bn1", ("~conv2",), "bn1"),
                         ("add1", ("bn1", "relu1"), "~add1")]
    assert net.graph.out == "dense1" and net.run_ops[-1] is net.head
    assert not net.run_body[0].need_dx  # the first conv reads the input: no dx


FUSED = """  conv2d 4 kernel=3 padding=same
  relu
  residual {
    conv2d 4 kernel=3 padding=same bias=false
    batchnorm
    relu
    maxpool 2
    conv2d 4 kernel=3 padding=same
    shortcut {
      conv2d 4 kernel=3 padding=same
      maxpool 2
    }
  }
  conv2d 6 kernel=3 padding=same name=twice
  maxpool 2 name=p1
  maxpool 2 from=twice stride=1 name=p2
  conv2d 6 kernel=3 from=p2
  global_avgpool
  add p1, gap1
  dense 3
  softmax
"""


def test_conv_pool_hand_overs_work_inside_blocks_where_the_conv_has_one_reader():
    text = spec("input image[1, 8, 8]", FUSED.replace("add p1, gap1", "flatten from=p1\n  dense 6\n  add dense1, gap1"))
    model = frontend.parse(text)
    fused = Net(model, dtype=np.float64, seed=2)
    by_name = {op.name: op for op in fused.run_body}
    assert by_name["conv2"].pool is by_name["maxpool1"]  # conv -> batchnorm -> (relu) -> maxpool, in the body
    assert by_name["conv4"].pool is by_name["maxpool2"]  # conv -> maxpool in the shortcut
    assert by_name["twice"].pool is None  # read by two pools: stays NCHW
    plain_net = type("Plain", (Net,), {"fuse_conv_maxpool": False, "commute_relu_maxpool": False})
    plain = plain_net(model, dtype=np.float64, seed=2)
    assert all(getattr(op, "pool", None) is None for op in plain.run_body)
    x = np.random.default_rng(4).normal(size=(5, 1, 8, 8))
    y = np.array([0, 1, 2, 0, 1])
    np.testing.assert_allclose(fused.forward(x), plain.forward(x), rtol=1e-12)
    (lf, gf), (lp, gp) = fused.loss_and_grads(x, y), plain.loss_and_grads(x, y)
    assert lf == pytest.approx(lp, rel=1e-12)
    for k in gp:
        np.testing.assert_allclose(gf[k], gp[k], rtol=1e-9, atol=1e-12, err_msg=k)


# --- training, checkpoints, resume ------------------------------------------------------------

MLP = spec("input [2]", "  dense 16\n  tanh\n  residual {\n    dense 16 bias=false\n    batchnorm momentum=0.9\n"
                        "    tanh\n    dense 16\n  }\n  dense 3 from=add1\n  softmax\n")
MLP += "train epochs=4 batch=32 seed=3\n"


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y


def test_a_graph_learns_and_resumes_to_the_same_weights(tmp_path):
    x, y = blobs()
    full = Net(frontend.parse(MLP))
    h = fit(full, x, y, run_dir=tmp_path / "a", progress=False)
    assert h["val_accuracy"][-1] > 0.9

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(Net(frontend.parse(MLP)), x, y, run_dir=tmp_path / "b", progress=False, on_epoch=stop)
    resumed = Net(frontend.parse(MLP))
    fit(resumed, x, y, run_dir=tmp_path / "b", resume=True, progress=False)
    assert all(np.array_equal(full.params[k], resumed.params[k]) for k in full.params)


def test_checkpoints_of_graphs_are_format_2_and_load_back(tmp_path):
    net = Net(frontend.parse(MLP))
    path = net.save(tmp_path / "g.npz")
    meta = checkpoint.read_meta(path)
    assert meta["format"] == 2
    saved = checkpoint.load_model(path)
    assert wiring(saved.model) == wiring(net.model)
    chain = Net(frontend.parse(spec("input [2]", "  dense 3\n  softmax\n")))
    assert checkpoint.read_meta(chain.save(tmp_path / "c.npz"))["format"] == 1  # older dnnspec still reads it
    # an IR written without the spec text rebuilds the graph from the JSON
    rebuilt = checkpoint.model_from_dict(json.loads(net.model.to_json()))
    assert wiring(rebuilt) == wiring(net.model) and rebuilt.layer("add1").in_shapes == ((16,), (16,))


def test_an_ir_from_before_graphs_loads_as_a_chain():
    d = json.loads(frontend.parse(spec("input [2]", "  dense 4\n  tanh\n  dense 3\n  softmax\n")).to_json())
    for layer in d["layers"]:
        del layer["inputs"], layer["in_shapes"]
    model = checkpoint.model_from_dict(d)
    assert model.is_chain and model.layer("dense2").inputs == ("tanh1",)


def test_one_short_epoch_of_the_resnet_spec_on_a_subset():
    model = frontend.load(ROOT / "specs" / "fashion_resnet.dnn")
    net = Net(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 1, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 64)
    h = fit(net, x, y, epochs=1, batch=32, validation=0.25, progress=False)
    assert np.isfinite(h["loss"][0]) and len(h) == 1


# --- check --graph -------------------------------------------------------------------------


def test_layout_puts_branches_beside_the_main_path():
    from dnnspec.netdraw import layout

    pos = layout(frontend.parse(spec("input image[1, 8, 8]", RESIDUAL)))
    assert pos["input"] == (0, 0) and pos["conv1"] == (0, 1)
    assert pos["add1"] == (0, 5)  # one row below its lowest input (bn1 at row 4)
    assert pos["conv4"][0] == 1 and pos["conv4"][1] == pos["conv3"][1]  # the shortcut, beside the body
    assert pos["down"] == (0, 9)
    assert len(set(pos.values())) == len(pos)  # no two boxes in one place


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_check_draws_the_graph(tmp_path, capsys, suffix):
    pytest.importorskip("matplotlib")
    out = tmp_path / f"net{suffix}"
    assert main(["check", str(ROOT / "specs" / "digits_inception.dnn"), "--graph", str(out)]) == 0
    captured = capsys.readouterr()
    assert "concat1" in captured.out and f"drew digits_inception (25 layers) to {out}" in captured.err
    data = out.read_bytes()
    if suffix == ".svg":
        text = data.decode()
        assert text.count("<path") > 2 * 25  # a box and at least one arrow per layer
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_usage_errors_are_one_line(tmp_path):
    spirals = str(ROOT / "specs" / "spirals.dnn")
    for args in (["--graph", str(tmp_path / "net.jpg")], ["--graph", str(tmp_path / "no" / "dir" / "net.svg")]):
        r = subprocess.run([sys.executable, "-m", "dnnspec", "check", spirals, *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "--graph" in r.stderr
    assert main(["check", spirals, spirals, "--graph", str(tmp_path / "x.svg")]) == 2


def test_the_language_doc_graph_example_parses():
    doc = (ROOT / "docs" / "language.md").read_text()
    block = doc.split("## Graphs: residual blocks")[1].split("```\n")[1]
    model = frontend.parse("input image[1, 28, 28]\nclasses 10\n" + block)
    assert model.layer("concat1").out_shape == (96, 14, 14)  # as its comment says
    assert model.layer("down").inputs == ("bn5", "bn6") and model.layer("b3").inputs == ("r",)


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("digits_inception", 0.95), ("spirals_resmlp", 0.97)])
def test_the_small_graph_specs_learn_their_data(tmp_path, capsys, name, floor):
    """The whole recipe of each spec (a few seconds): digits 0.986, spirals 1.000 when written."""
    assert main(["train", str(ROOT / "specs" / f"{name}.dnn"), "--out", str(tmp_path / "run"),
                 "--progress", "none"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert acc > floor, out
