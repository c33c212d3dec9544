"""The front end: IR built from text, golden errors, render round trip."""

import json
from pathlib import Path

import pytest

from dnnspec import frontend, summary
from dnnspec.errors import SpecError, UsageError

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.dnn"))
BROKEN = sorted((ROOT / "specs" / "broken").glob("*.dnn"))

MINI = "input [4]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n"


@pytest.fixture(autouse=True)
def _fixed_memory_limit(monkeypatch):
    """One memory limit whatever the machine: cifar_like_cnn.dnn needs about 7 GiB to train, and
    these tests are about the language, not the machine (tests/test_hardening_frontend.py is)."""
    monkeypatch.setenv("DNNSPEC_MEMORY_LIMIT", "16GiB")


def _errors(text):
    with pytest.raises(SpecError) as info:
        frontend.parse(text, "t.dnn")
    return [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics]


# --- golden errors ---------------------------------------------------------------


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_spec_gives_its_golden_errors(path):
    # the memory_* goldens name the limit: 16GiB, set by _fixed_memory_limit
    expected = path.with_suffix(".expected").read_text()
    with pytest.raises(SpecError) as info:
        frontend.load(path)
    got = "".join(f"{d.span.line}:{d.span.col}: {d.message}\n" + (f"    hint: {d.hint}\n" if d.hint else "")
                  for d in info.value.diagnostics)
    assert got == expected
    rendered = info.value.render()
    assert rendered.startswith(f"{path}:") and "error:" in rendered


def test_every_broken_spec_has_expected_file():
    assert len(BROKEN) >= 30
    assert all(p.with_suffix(".expected").exists() for p in BROKEN)


def test_render_shows_line_and_caret():
    with pytest.raises(SpecError) as info:
        frontend.parse("input [4]\nclasses 3\nlayers {\n  elux alpha=1.0\n}\n", "specs/broken.dnn")
    assert info.value.render().splitlines()[:4] == [
        "specs/broken.dnn:4:3: error: unknown activation 'elux'",
        "  4 |   elux alpha=1.0",
        "    |   ^^^^",
        "hint: did you mean 'elu'?",
    ]


# --- the IR ----------------------------------------------------------------------


def test_fashion_mlp_ir_matches_hand_count():
    m = frontend.load(ROOT / "specs" / "fashion_mlp.dnn")
    assert [layer.name for layer in m.layers] == [
        "flatten1", "dense1", "bn1", "elu1", "dropout1", "dense2", "bn2", "elu2", "dropout2", "dense3", "softmax1"]
    # hand count: 784*256+256, 4*256 (2 trainable), 256*256+256, 4*256, 256*10+10
    trainable = (784 * 256 + 256) + 2 * 256 + (256 * 256 + 256) + 2 * 256 + (256 * 10 + 10)
    assert sum(p.size for p in m.params if p.trainable) == trainable
    assert sum(p.size for p in m.params if not p.trainable) == 4 * 256
    assert m.input.shape == (1, 28, 28) and m.input.scale == pytest.approx(1 / 255)
    assert m.layer("dense1").options["init"] == "he_normal"
    assert m.layer("dense3").options["init"] == "xavier_normal"  # default before softmax
    assert "init" not in m.layer("dense3").explicit
    assert m.task.classes == 10 and m.task.class_names[-1] == "Ankle boot"
    assert m.optimizer.kind == "adam" and m.optimizer.options["lr"] == 1e-3
    assert m.schedule.kind == "cosine" and m.schedule.options["warmup"] == 1.0
    assert dict(m.train) == {"epochs": 20, "batch": 128, "validation": 0.1, "seed": 7, "early_stop": 5,
                             "checkpoint_every": 1}
    assert m.normalize.mode == "auto" and m.data == "fashion-mnist" and m.name == "fashion_mlp"


def test_cnn_shapes_by_hand():
    m = frontend.load(ROOT / "specs" / "fashion_cnn.dnn")
    shapes = {layer.name: layer.out_shape for layer in m.layers}
    assert shapes["conv1"] == (32, 28, 28) and shapes["maxpool1"] == (32, 14, 14)
    assert shapes["maxpool2"] == (64, 7, 7) and shapes["flatten1"] == (64 * 7 * 7,)
    assert m.layer("conv2").param("kernel").shape == (64, 32, 3, 3)
    assert [s.kind for s in m.augment] == ["flip"]
    assert m.augment[0].options == {"direction": "horizontal", "p": 0.5}


def test_defaults_when_statements_are_missing():
    m = frontend.parse(MINI)
    assert m.loss.kind == "cross_entropy" and m.optimizer.kind == "adam" and m.schedule.kind == "constant"
    assert m.train["epochs"] == 10 and m.normalize.mode == "none" and m.data is None and m.name == "model"
    r = frontend.parse("input [4]\ntargets 2\nlayers {\n  dense 2\n}\n")
    assert r.loss.kind == "mse" and r.task.kind == "regression" and r.task.targets == 2


def test_repeat_expands_and_suffixes_user_names():
    m = frontend.parse("input [4]\nclasses 3\nlayers {\n  repeat 3 {\n    dense 5 name=h\n    relu\n  }\n"
                       "  dense 3\n  softmax\n}\n")
    assert [layer.name for layer in m.layers] == ["h_1", "relu1", "h_2", "relu2", "h_3", "relu3", "dense4",
                                                 "softmax1"]
    assert m.layers[0].span.line == m.layers[2].span.line == 5


def test_nested_repeat():
    m = frontend.parse("input [4]\nclasses 3\nlayers {\n  repeat 2 {\n    repeat 2 {\n      dense 4 name=a\n"
                       "    }\n  }\n  dense 3\n  softmax\n}\n")
    assert [layer.name for layer in m.layers][:4] == ["a_1_1", "a_2_1", "a_1_2", "a_2_2"]


def test_bce_single_output_and_learnable_activations():
    m = frontend.load(ROOT / "specs" / "moons_sgd.dnn")
    assert m.output_shape == (1,) and m.loss.kind == "binary_cross_entropy"
    assert m.normalize.mean == (0.5,) and m.normalize.std == (0.8, 0.5)
    r = frontend.load(ROOT / "specs" / "regression.dnn")
    assert r.layer("leaky_relu1").param("alpha").shape == (32,)
    assert r.layer("elu1").param("alpha").shape == (1,)


def test_json_is_valid_and_keyed_by_layer_names():
    d = json.loads(frontend.parse(MINI).to_json())
    assert d["layers"][0]["name"] == "dense1" and d["layers"][0]["out_shape"] == [3]


# --- render round trip -------------------------------------------------------------

CONSTRUCTS = {
    "vector": MINI,
    "image_everything": (ROOT / "specs" / "cifar_like_cnn.dnn").read_text(),
    "class_names_odd": 'input [2]\nclasses "a b", "true", "x\\"y"\nlayers {\n  dense 3\n  softmax\n}\n',
    "normalize_values": "input image[2, 4, 4]\nnormalize mean=[0.1, 0.2] std=0.5\nclasses 2\n"
                        "layers {\n  flatten\n  dense 2\n  softmax\n}\n",
    "normalize_none": "input [3] scale=0.5\nnormalize none\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n",
    "augment_fractions": "input image[1, 8, 8]\nclasses 2\naugment {\n  translate 10%\n  rotate 7.5\n"
                         "  flip vertical p=1\n}\nlayers {\n  global_avgpool\n  dense 2\n  softmax\n}\n",
    "pools_and_padding": "input image[1, 9, 7]\nclasses 2\nlayers {\n  conv2d 3 kernel=[3, 2] stride=[2, 1] "
                         "padding=[1, 0]\n  avgpool 2 stride=1 padding=1\n  maxpool [2, 1]\n  flatten\n  dense 2\n"
                         "  softmax\n}\n",
    "inits": "input [3]\ntargets 2\nlayers {\n  dense 4 init=normal std=0.2\n  softplus\n  dense 4 init=uniform "
             "limit=0.3 bias=false\n  tanh\n  dense 4 init=lecun_uniform\n  dense 2 init=zeros\n}\n"
             "optimizer adam weight_decay=0.01 decay_mode=decoupled clip_norm=1\nschedule step every=3\n",
    "data_path": 'data "some dir/x.npz"\ninput [4]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n',
}


def _comparable(model):
    """The IR without spans, paths and the explicit-option sets (render makes everything explicit)."""
    d = json.loads(model.to_json())

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("span", "data_span", "path", "explicit")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(d)


@pytest.mark.parametrize("text", [*CONSTRUCTS.values(), *(p.read_text() for p in SPECS)],
                         ids=[*CONSTRUCTS, *(p.stem for p in SPECS)])
def test_render_round_trip(text):
    m = frontend.parse(text)
    out = summary.render(m)
    again = frontend.parse(out)
    assert _comparable(again) == _comparable(m)
    assert summary.render(again) == out


def test_render_fills_defaults():
    out = summary.render(frontend.parse(MINI))
    assert "dense 3 init=xavier_normal fan=avg bias=true name=dense1" in out
    assert "optimizer adam lr=0.001 beta1=0.9 beta2=0.999 eps=1e-08" in out
    assert "train epochs=10 batch=32 validation=0.1 seed=0 early_stop=0 checkpoint_every=1" in out


# --- files -------------------------------------------------------------------------


def test_load_bad_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        frontend.load(tmp_path / "nope.dnn")
    with pytest.raises(UsageError, match="directory"):
        frontend.load(tmp_path)
    (tmp_path / "bin.dnn").write_bytes(bytes(range(256)))
    with pytest.raises(UsageError, match="binary"):
        frontend.load(tmp_path / "bin.dnn")
    (tmp_path / "latin.dnn").write_bytes(b"network caf\xe9\n")
    with pytest.raises(UsageError, match="UTF-8"):
        frontend.load(tmp_path / "latin.dnn")
    (tmp_path / "big.dnn").write_bytes(b"# x\n" * 2_600_000)
    with pytest.raises(UsageError, match="at most 1 MB"):
        frontend.load(tmp_path / "big.dnn")
    (tmp_path / "empty.dnn").write_text("")
    with pytest.raises(SpecError, match="missing 'input'"):
        frontend.load(tmp_path / "empty.dnn")


def test_bom_and_crlf_are_accepted(tmp_path):
    p = tmp_path / "win.dnn"
    p.write_bytes(b"\xef\xbb\xbf" + MINI.replace("\n", "\r\n").encode())
    assert frontend.load(p).layers[0].span.line == 4
    with pytest.raises(SpecError) as info:
        frontend.parse("\ufeff" + MINI.replace("dense 3", "dense 0").replace("\n", "\r\n"))
    assert (info.value.diagnostics[0].span.line, info.value.diagnostics[0].span.col) == (4, 9)


def test_more_semantic_errors():
    assert _errors("input [4]\nclasses 3\nlayers {\n  dense 3 units=4\n  softmax\n}\n")[0][2] == (
        "option 'units' of dense is given twice")
    assert _errors("input [1, 2, 3]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n")[0][:3] == (
        1, 7, "vector input needs one size, found 3")
    assert _errors(MINI + "loss binary_cross_entropy\n")[0][2] == (
        "binary_cross_entropy needs exactly 2 classes, found 3")
    assert _errors(MINI.replace("dense 3", 'dense 3 name="a.b"'))[0][2] == "layer name 'a.b' is not a plain name"
    assert _errors(MINI + "data mnist-fashion\n")[0][2] == "unknown data source 'mnist-fashion'"
    assert _errors(MINI.replace("dense 3", "repeat 0 {\n dense 3\n }"))[0][2] == "repeat: must be at least 1, found 0"


def test_language_doc_lists_every_option():
    from dnnspec.summary import option_tables

    doc = (ROOT / "docs" / "language.md").read_text()
    block = doc.split("<!-- BEGIN OPTIONS -->\n")[1].split("<!-- END OPTIONS -->")[0]
    assert block == option_tables(), "regenerate docs/language.md's option section from dnnspec.summary"
    from dnnspec.registry import LAYERS
    from dnnspec.schema import AUGMENT, OPTIMIZER, SCHEDULE, STATEMENTS

    for table in (STATEMENTS, LAYERS, AUGMENT, OPTIMIZER, SCHEDULE):
        for schema in table.values():
            assert f"#### `{schema.name}`" in block
            assert all(f"| `{o.name}` |" in block for o in schema.options)


def test_doc_examples_parse():
    """Every `example` of the schema is a valid statement in a minimal spec."""
    from dnnspec import registry
    from dnnspec.registry import LAYERS
    from dnnspec.schema import AUGMENT

    for s in LAYERS.values():
        body = s.example if s.name != "softmax" else "dense 3"
        if registry.takes_many(s.name):  # add a, b: the example's names, given to two layers before it
            first, second = s.example.split(" ", 1)[1].split(", ")
            body = f"dense 3 name={first}\n  dense 3 name={second} from=input\n  {s.example}"
        img = s.name in ("conv2d", "maxpool", "avgpool", "global_avgpool", "global_maxpool")
        head = "input image[1, 8, 8]\n" if img else "input [4]\n"
        tail = "  flatten\n  dense 3\n  softmax\n" if img or s.name == "flatten" else "  dense 3\n  softmax\n"
        frontend.parse(f"{head}classes 3\nlayers {{\n  {body}\n{tail}}}\n")
    for s in AUGMENT.values():
        frontend.parse(f"input image[1, 8, 8]\nclasses 3\naugment {{\n  {s.example}\n}}\n"
                       "layers {\n  flatten\n  dense 3\n  softmax\n}\n")
