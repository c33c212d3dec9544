"""The registry of layer kinds: one entry per kind, and the engine and the export keyed by the same names.

The made-up activation ``cube`` (y = x^3) is added in the three places docs/architecture.md's
checklist names, and nowhere else: its registry entry, its engine op, its ONNX converter.
It then parses, checks, renders, trains, passes finite differences and exports with
onnxruntime parity, and is removed again.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import net_gradients, rel_error

from dnnspec import frontend, ir, memory, registry, summary
from dnnspec.engine import base
from dnnspec.engine.net import Net, _load_ops
from dnnspec.errors import ShapeError, SpecError
from dnnspec.export.converters import CONVERTERS, converter
from dnnspec.export.onnx_export import to_onnx

BUILT_IN = ("dense", "conv2d", "maxpool", "avgpool", "global_avgpool", "global_maxpool", "flatten", "batchnorm",
            "layernorm", "dropout", "relu", "leaky_relu", "elu", "gelu", "silu", "selu", "softplus", "sigmoid", "tanh",
            "softmax", "add", "concat")


def mismatch(kinds, ops, converters) -> str | None:
    """What differs between the registry's kinds, the engine's op keys and the converter keys, or None."""
    problems = [f"{what} {sorted(set(kinds) - set(keys))} without {where}"
                for what, where, keys in (("kinds", "an engine op", ops), ("kinds", "a converter", converters))
                if set(kinds) - set(keys)]
    problems += [f"{where} for unregistered {sorted(set(keys) - set(kinds))}"
                 for where, keys in (("engine ops", ops), ("converters", converters)) if set(keys) - set(kinds)]
    return "; ".join(problems) or None


def test_the_registry_the_engine_and_the_export_know_the_same_kinds():
    _load_ops()
    assert mismatch(registry.KINDS, base.OPS, CONVERTERS) is None
    assert tuple(registry.KINDS) == BUILT_IN  # docs/language.md lists them in this order


def test_a_kind_missing_from_one_table_is_caught():
    """The check above can fail: a kind with no op, or an op or converter of no kind, is named."""
    kinds = {**registry.KINDS, "cube": None}
    assert mismatch(kinds, base.OPS, CONVERTERS) == "kinds ['cube'] without an engine op; kinds ['cube'] without " \
                                                   "a converter"
    assert mismatch(registry.KINDS, {**base.OPS, "cube": None}, CONVERTERS) == "engine ops for unregistered ['cube']"


def test_ops_and_converters_are_refused_for_unknown_kinds():
    with pytest.raises(ValueError, match="engine op for unknown layer kind 'cubee'"):
        base.register("cubee")
    with pytest.raises(ValueError, match="ONNX converter for unknown layer kind 'cubee'"):
        converter("cubee")
    with pytest.raises(ValueError, match="'relu' is already registered"):
        registry.register(registry.activation("relu", "again", init_before=None))


def test_each_fact_of_a_kind_is_read_from_its_entry():
    assert registry.head_for("cross_entropy") == "softmax"
    assert registry.head_for("binary_cross_entropy") == "sigmoid"
    assert registry.head_for("mse") is None
    assert registry.activations() == ("relu", "leaky_relu", "elu", "gelu", "silu", "selu", "softplus", "sigmoid",
                                      "tanh", "softmax")
    assert [k for k in registry.KINDS if registry.is_weighted(k)] == ["dense", "conv2d"]
    assert [k.name for k in registry.KINDS.values() if k.last_only] == ["softmax"]
    assert {k: registry.prefix_of(k) for k in ("conv2d", "batchnorm", "global_avgpool", "dense")} == {
        "conv2d": "conv", "batchnorm": "bn", "global_avgpool": "gap", "dense": "dense"}
    assert registry.LAYERS["dense"] is registry.KINDS["dense"].schema and len(registry.LAYERS) == len(BUILT_IN)


def test_shape_rules_take_the_list_of_input_shapes():
    conv = registry.KINDS["conv2d"]
    opts = {"filters": 4, "kernel": (3, 3), "stride": (2, 2), "padding": "same"}
    assert conv.shape(opts, [(1, 7, 7)]) == (4, 4, 4)
    assert registry.KINDS["flatten"].shape({}, [(4, 4, 4)]) == (64,)
    with pytest.raises(ShapeError, match="dense needs a vector input"):
        registry.KINDS["dense"].shape({"units": 3}, [(4, 4, 4)])
    dense = ir.model_from_layers((6,), [("dense", {"units": 3, "bias": False})]).layers[0]
    assert dense.flops == 2 * 6 * 3 and [p.name for p in dense.params] == ["dense1.kernel"]


# --- a made-up activation, added in the checklist's three places --------------------------------------


class Cube(base.Op):
    """y = x^3; dx = 3 x^2 dy."""

    def forward(self, x, params, training, rng):
        self.x = x
        return x * x * x

    def backward(self, dy, params, grads):
        return dy * (3 * self.x * self.x) if self.need_dx else None


def cube_onnx(g, layer, params, fold):
    """Mul(Mul(x, x), x): a pending affine map does not commute with x^3, so it is written first."""
    g.before()
    x = g.x
    square = g.node("Mul", [x, x], f"{layer.name}/square")
    g.node("Mul", [square, x], layer.name)


@pytest.fixture
def cube():
    """``cube`` in the registry, the engine and the export for one test, removed afterwards."""
    _load_ops()
    kind = registry.register(registry.activation("cube", "x^3", init_before="xavier_normal", flops=2))
    try:
        base.register("cube")(Cube)
        converter("cube")(cube_onnx)
        yield kind
    finally:
        registry.unregister("cube")
        base.OPS.pop("cube", None)
        CONVERTERS.pop("cube", None)


SPEC = """network cubic
input [4]
normalize mean=0.5 std=2
classes 3
layers {
  dense 6
  cube
  dense 3
  softmax
}
optimizer sgd lr=0.05
train epochs=1 batch=8 validation=0 seed=3
"""


def test_a_new_activation_needs_its_entry_its_op_and_its_converter_only(cube):
    model = frontend.parse(SPEC)
    assert [(la.name, la.kind) for la in model.layers] == [("dense1", "dense"), ("cube1", "cube"),
                                                             ("dense2", "dense"), ("softmax1", "softmax")]
    assert model.layer("dense1").options["init"] == "xavier_normal"  # its init_before
    assert model.layer("cube1").flops == 2 * 6
    again = frontend.parse(summary.render(model))  # --render round trip
    assert [(la.name, dict(la.options), la.out_shape, la.params) for la in again.layers] == [
        (la.name, dict(la.options), la.out_shape, la.params) for la in model.layers]
    assert "cube1" in summary.summary(model) and memory.estimate(model).total > 0
    assert mismatch(registry.KINDS, base.OPS, CONVERTERS) is None
    with pytest.raises(SpecError, match="did you mean 'cube'"):
        frontend.parse(SPEC.replace("  cube\n", "  cubee\n"))

    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 1.0, (32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    net = Net(model)
    before = {k: v.copy() for k, v in net.params.items()}
    history = net.fit(x, y, progress=False)
    assert np.isfinite(history.rows[-1]["loss"]) and not np.array_equal(before["dense1.kernel"],
                                                                         net.params["dense1.kernel"])

    net64 = Net(model, dtype=np.float64, seed=1)
    for name, (analytic, numeric) in net_gradients(net64, x[:5].astype(np.float64), y[:5], net64.trainable).items():
        assert rel_error(analytic, numeric) < 1e-6, name

    ort = pytest.importorskip("onnxruntime")
    proto = to_onnx(model, net.params)
    assert [n.op_type for n in proto.graph.node].count("Mul") >= 2
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, net.forward(x), atol=1e-5, rtol=1e-5)


def test_a_kind_registered_without_an_engine_op_is_a_spec_error():
    kind = registry.register(registry.activation("cube", "x^3", init_before=None))
    try:
        model = frontend.parse(SPEC)
        with pytest.raises(SpecError, match="the engine has no implementation of 'cube'"):
            Net(model)
    finally:
        registry.unregister(kind.name)
    with pytest.raises(SpecError, match="unknown layer 'cube'"):
        frontend.parse(SPEC)
