"""Knowledge distillation: the loss and its gradient, the teacher hook in fit, the ONNX teacher, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from dnnspec import frontend, ir
from dnnspec.cli import main
from dnnspec.engine.distill import Distiller, OnnxTeacher, distill_loss, log_softmax
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import fit
from dnnspec.errors import CheckpointError, DataError, UsageError

# --- the loss against its formula ----------------------------------------------------------------


def reference(z, y, v, t, a):
    """L and dL/dz of the docstring's formula, element by element in plain Python floats."""
    n, k = len(z), len(z[0])

    def softmax(row, temp):
        m = max(row)
        e = [math.exp((r - m) / temp) for r in row]
        return [x / sum(e) for x in e]

    loss, grad = 0.0, [[0.0] * k for _ in range(n)]
    for i in range(n):
        p, pt, qt = softmax(z[i], 1.0), softmax(z[i], t), softmax(v[i], t)
        ce = -math.log(p[y[i]])
        kl = sum(q * (math.log(q) - math.log(s)) for q, s in zip(qt, pt))
        loss += ((1 - a) * ce + a * t * t * kl) / n
        for j in range(k):
            grad[i][j] = ((1 - a) * (p[j] - (j == y[i])) + a * t * (pt[j] - qt[j])) / n
    return loss, np.array(grad)


def test_hand_computed_two_class_case():
    """z = (0, log 3): p = (1/4, 3/4); teacher v = (0, 0): q = (1/2, 1/2) at every T; label 1."""
    z, v, y = np.array([[0.0, math.log(3.0)]]), np.zeros((1, 2)), np.array([1])
    a = 0.3
    loss, d = distill_loss(z, y, v, temperature=1.0, weight=a)
    # CE = log 4/3; KL(q || p) = 1/2 log 2 + 1/2 log 2/3 = 1/2 log 4/3
    assert loss == pytest.approx((1 - a) * math.log(4 / 3) + a * 0.5 * math.log(4 / 3), rel=1e-12)
    # (1-A)(p - onehot) + A (p - q) = (1-A)(1/4, -1/4) + A(-1/4, 1/4)
    np.testing.assert_allclose(d, [[(1 - 2 * a) / 4, -(1 - 2 * a) / 4]], rtol=1e-12)
    # T = 2: p^T = (1, sqrt 3) / (1 + sqrt 3); the soft term carries T^2 = 4 and its gradient T = 2
    r3 = math.sqrt(3.0)
    pt = np.array([1.0, r3]) / (1 + r3)
    kl = 0.5 * math.log(0.5 / pt[0]) + 0.5 * math.log(0.5 / pt[1])
    loss, d = distill_loss(z, y, v, temperature=2.0, weight=a)
    assert loss == pytest.approx((1 - a) * math.log(4 / 3) + a * 4 * kl, rel=1e-12)
    np.testing.assert_allclose(d, (1 - a) * np.array([[0.25, -0.25]]) + a * 2 * (pt - 0.5)[None], rtol=1e-12)


@pytest.mark.parametrize("t,a", [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (0.5, 0.2), (3.0, 0.0)])
def test_loss_and_gradient_match_the_formula_and_finite_differences(t, a):
    rng = np.random.default_rng(int(t * 10 + a * 100))
    z, v = rng.normal(size=(5, 4)), rng.normal(scale=2.0, size=(5, 4))
    y = rng.integers(0, 4, 5)
    loss, d = distill_loss(z, y, v, temperature=t, weight=a)
    ref_loss, ref_d = reference(z.tolist(), y.tolist(), v.tolist(), t, a)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert rel_error(d, ref_d) < 1e-10
    zz = z.copy()
    fd = numeric_grad(lambda: distill_loss(zz, y, v, temperature=t, weight=a, grad=False)[0], zz)
    assert rel_error(d, fd) < 1e-6


def test_soft_targets_from_probabilities_equal_those_from_logits():
    """log softmax(v) = v - logsumexp(v): a constant per row, which softmax(./T) ignores."""
    rng = np.random.default_rng(1)
    z, v, y = rng.normal(size=(6, 5)), rng.normal(scale=4.0, size=(6, 5)), rng.integers(0, 5, 6)
    from_logits = distill_loss(z, y, v, 3.0, 0.7)
    from_probs = distill_loss(z, y, log_softmax(v), 3.0, 0.7)
    assert from_probs[0] == pytest.approx(from_logits[0], rel=1e-12)
    np.testing.assert_allclose(from_probs[1], from_logits[1], rtol=1e-10, atol=1e-15)


def test_weight_zero_returns_the_hard_loss_bit_for_bit():
    from dnnspec.engine.losses import softmax_cross_entropy

    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(7, 3)).astype(np.float32), rng.integers(0, 3, 7)
    loss, d = distill_loss(z, y, rng.normal(size=(7, 3)), 4.0, 0.0)
    ref_loss, ref_d = softmax_cross_entropy(z, y)
    assert loss == ref_loss and d.dtype == np.float32 and np.array_equal(d, ref_d)


def test_extreme_teacher_logits_stay_finite():
    z = np.array([[1e4, -1e4, 0.0]])
    loss, d = distill_loss(z, np.array([0]), np.array([[-1e4, 1e4, 0.0]]), 1.0, 0.5)
    assert math.isfinite(loss) and np.isfinite(d).all()


# --- the hook in fit ------------------------------------------------------------------------------


def blobs(n, seed, k=3, dim=2, spread=1.0, centers=None):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]]) if centers is None else centers
    y = rng.integers(0, len(centers), n)
    return (centers[y] + spread * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), y


def mlp(dim=2, k=3, hidden=16, dtype=np.float32, seed=3, epochs=3, dropout=0.0, lr=0.01):
    layers = [("dense", {"units": hidden}), ("relu", {})]
    layers += [("dropout", {"rate": dropout})] if dropout else []
    layers += [("dense", {"units": k}), ("softmax", {})]
    m = ir.model_from_layers((dim,), layers, optimizer="adam", optimizer_options={"lr": lr},
                             train={"epochs": epochs, "batch": 32, "seed": seed, "validation": 0.0})
    return Net(m, dtype=dtype)


def test_net_gradients_through_the_hook_match_finite_differences():
    net = mlp(dtype=np.float64)
    x, y = blobs(12, 0)
    v = np.random.default_rng(3).normal(scale=2.0, size=(12, 3))
    d = Distiller(lambda xb: v, temperature=3.0, weight=0.6)
    _, grads = d.loss_and_grads(net, x.astype(np.float64), y)
    grads = {k: g.copy() for k, g in grads.items()}
    for name in ("dense1.kernel", "dense2.bias"):
        fd = numeric_grad(lambda: d.loss_and_grads(net, x.astype(np.float64), y)[0], net.params[name])
        assert rel_error(grads[name], fd) < 1e-6, name
    assert net.loss_fn.__name__ == "softmax_cross_entropy"  # the net's own loss is back after each call


def test_weight_zero_trains_bit_identically_to_no_teacher():
    x, y = blobs(200, 1)
    plain, taught = mlp(dropout=0.2), mlp(dropout=0.2)
    fit(plain, x, y, progress=False)
    calls = []

    def teacher(xb):
        calls.append(len(xb))
        return np.random.default_rng(len(calls)).normal(size=(len(xb), 3))

    fit(taught, x, y, progress=False, teacher=Distiller(teacher, temperature=4.0, weight=0.0))
    assert len(calls) == 3 * math.ceil(200 / 32)  # the teacher did run, on every batch
    assert all(np.array_equal(plain.params[k], taught.params[k]) for k in plain.params)


AUG_SPEC = """network tiny_img
input image[1, 6, 6]
classes 3
augment {
  flip      horizontal p=0.5
  translate 1px
}
layers {
  flatten
  dense 3
  softmax
}
loss cross_entropy
optimizer sgd lr=0.1
train epochs=2 batch=8 validation=0 seed=3
"""


def test_teacher_sees_the_augmented_batch_the_student_trains_on():
    net = Net(frontend.parse(AUG_SPEC))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 1, 6, 6)).astype(np.uint8), rng.integers(0, 3, 20)
    seen_by_teacher, seen_by_student = [], []
    inner = net.loss_and_grads

    def spy(xb, yb, rng=None):
        seen_by_student.append(np.array(xb, copy=True))
        return inner(xb, yb, rng)

    def teacher(xb):
        seen_by_teacher.append(np.array(xb, copy=True))
        return np.zeros((len(xb), 3))

    net.loss_and_grads = spy
    fit(net, x, y, progress=False, teacher=Distiller(teacher, weight=0.5))
    assert len(seen_by_teacher) == len(seen_by_student) == 2 * 3
    for t, s in zip(seen_by_teacher, seen_by_student):
        assert t.dtype == np.float32 and np.array_equal(t, s)
    # augmented indeed: a batch of raw rows would be uint8 and whole rows of x
    rows = {r.tobytes() for r in x.astype(np.float32)}
    assert any(r.tobytes() not in rows for b in seen_by_teacher for r in b)


def test_a_distilled_student_beats_the_same_student_on_labels_alone():
    """Few noisy examples of 8 overlapping Gaussians; the teacher gives the exact class posteriors."""
    dim, k, spread = 20, 8, 1.6
    centers = np.random.default_rng(0).normal(size=(k, dim))
    x, y = blobs(200, 1, centers=centers, spread=spread)
    xt, yt = blobs(5000, 2, centers=centers, spread=spread)

    def bayes(xb):  # log posterior up to a constant per row
        return -((np.asarray(xb, np.float64)[:, None] - centers[None]) ** 2).sum(-1) / (2 * spread ** 2)

    results = []
    for seed in (5, 6):
        plain, taught = (mlp(dim, k, hidden=32, seed=seed, epochs=30) for _ in range(2))
        fit(plain, x, y, progress=False)
        fit(taught, x, y, progress=False, teacher=Distiller(bayes, temperature=2.0, weight=0.9))
        results.append(((plain.predict(xt) == yt).mean(), (taught.predict(xt) == yt).mean()))
    # measured: labels alone 0.746 / 0.736, distilled 0.826 / 0.834 (Bayes 0.851)
    assert all(distilled > plain + 0.04 for plain, distilled in results), results


def test_teacher_output_problems_are_one_line_data_errors():
    x, y = blobs(40, 0)
    with pytest.raises(DataError, match=r"logits of shape \(32, 4\).*needs \(32, 3\)"):
        fit(mlp(), x, y, progress=False, teacher=Distiller(lambda xb: np.zeros((len(xb), 4))))
    with pytest.raises(DataError, match="NaN or infinite"):
        fit(mlp(), x, y, progress=False, teacher=Distiller(lambda xb: np.full((len(xb), 3), np.nan)))


@pytest.mark.parametrize("t,a,msg", [(0.0, 0.5, "--temperature must be a positive"),
                                     (float("nan"), 0.5, "--temperature"),
                                     (2.0, 1.5, r"--distill-weight must be in \[0, 1\]"),
                                     (2.0, -0.1, "--distill-weight")])
def test_bad_temperature_and_weight(t, a, msg):
    with pytest.raises(UsageError, match=msg):
        Distiller(lambda xb: xb, temperature=t, weight=a)


def test_only_softmax_cross_entropy_students():
    x, y = blobs(40, 0)
    reg = ir.model_from_layers((2,), [("dense", {"units": 1})], loss="mse")
    with pytest.raises(UsageError, match="ends in softmax with loss cross_entropy; this spec ends in dense with "
                                         "loss mse"):
        fit(Net(reg), x, y.astype(np.float32), progress=False, teacher=Distiller(lambda xb: xb))
    binary = ir.model_from_layers((2,), [("dense", {"units": 1}), ("sigmoid", {})], loss="binary_cross_entropy")
    with pytest.raises(UsageError, match="loss binary_cross_entropy"):
        fit(Net(binary), x, (y > 0).astype(np.int64), progress=False, teacher=Distiller(lambda xb: xb))


def test_resume_must_distil_the_same_way(tmp_path):
    x, y = blobs(100, 0)
    d = Distiller(lambda xb: np.zeros((len(xb), 3)), temperature=2.0, weight=0.5)
    fit(mlp(epochs=1), x, y, progress=False, teacher=d, run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"distilled with --teacher the teacher --temperature 2 "
                                              r"--distill-weight 0.5; resume it with the same flags"):
        fit(mlp(), x, y, progress=False, run_dir=tmp_path / "run", resume=True, epochs=2)
    other = Distiller(d.teacher, temperature=3.0, weight=0.5)
    with pytest.raises(CheckpointError, match="same flags"):
        fit(mlp(), x, y, progress=False, run_dir=tmp_path / "run", resume=True, epochs=2, teacher=other)
    h = fit(mlp(), x, y, progress=False, run_dir=tmp_path / "run", resume=True, epochs=2, teacher=d)
    assert len(h) == 2
    fit(mlp(epochs=1), x, y, progress=False, run_dir=tmp_path / "plain")
    with pytest.raises(CheckpointError, match="trained without --teacher"):
        fit(mlp(), x, y, progress=False, run_dir=tmp_path / "plain", resume=True, epochs=2, teacher=d)


# --- the ONNX teacher -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_net():
    x, y = blobs(300, 4)
    net = mlp(hidden=32, seed=9, epochs=5)
    fit(net, x, y, progress=False)
    return net


def export_teacher(net, path, logits):
    from dnnspec.export.onnx_export import export

    return export(net, path, logits_output=logits)


@pytest.mark.parametrize("logits", [True, False])
def test_onnx_teacher_gives_the_nets_logits_up_to_a_row_constant(teacher_net, tmp_path, logits):
    t = OnnxTeacher(export_teacher(teacher_net, tmp_path / "t.onnx", logits))
    assert t.output == ("logits" if logits else "probabilities") and t.classes == 3
    x, _ = blobs(50, 5)
    v, ref = t(x).astype(np.float64), teacher_net.logits(x).astype(np.float64)
    shift = (v - ref).mean(axis=1, keepdims=True)
    if logits:
        assert np.abs(shift).max() < 1e-4
    np.testing.assert_allclose(v - shift, ref, atol=1e-4)


def test_onnx_teacher_checks_shapes_and_classes(teacher_net, tmp_path):
    path = export_teacher(teacher_net, tmp_path / "t.onnx", True)
    x, y = blobs(40, 0)
    wide = ir.model_from_layers((3,), [("dense", {"units": 3}), ("softmax", {})])
    with pytest.raises(UsageError, match=r"t.onnx: the teacher takes inputs of shape \[2\] but the student "
                                         r"<string> takes \[3\]"):
        fit(Net(wide), np.zeros((40, 3), np.float32), y, progress=False, teacher=str(path))
    four = ir.model_from_layers((2,), [("dense", {"units": 4}), ("softmax", {})])
    with pytest.raises(UsageError, match="the teacher outputs 3 classes but the student <string> has 4"):
        fit(Net(four), x, y, progress=False, teacher=path)
    reg = ir.model_from_layers((2,), [("dense", {"units": 3})], loss="mse")
    reg_path = export_teacher(Net(reg), tmp_path / "reg.onnx", False)
    with pytest.raises(UsageError, match=r"reg.onnx: --teacher needs a model with a 'logits' or 'probabilities' "
                                         r"output, this one has 'output'"):
        OnnxTeacher(reg_path)


def test_cli_trains_with_a_teacher_and_refuses_stray_flags(teacher_net, tmp_path, capsys):
    path = export_teacher(teacher_net, tmp_path / "t.onnx", True)
    x, y = blobs(300, 6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = tmp_path / "student.dnn"
    spec.write_text("network student\ninput [2]\nclasses 3\nlayers {\n  dense 8\n  relu\n  dense 3\n  softmax\n}\n"
                    "optimizer adam lr=0.02\ntrain epochs=2 batch=32 validation=0.2 seed=1\n")
    args = ["train", str(spec), "--data", str(tmp_path / "d.npz"), "--progress", "none"]
    assert main(args + ["--out", str(tmp_path / "run"), "--teacher", str(path), "--temperature", "3",
                        "--distill-weight", "0.75"]) == 0
    assert "distilling " + str(path) + " (temperature 3, weight 0.75)" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "r2"), "--temperature", "3"]) == 2
    assert "--temperature is a distillation option: give the teacher with --teacher" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "r3"), "--teacher", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: no such model file" in capsys.readouterr().err
