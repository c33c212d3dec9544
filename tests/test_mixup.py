"""mixup and cutmix: the soft-target losses against their formulas, the batch mixing, the trainer hook, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from dnnspec import frontend, ir
from dnnspec.augment import Augmenter, Mix, Mixer, box_area, cutmix_box
from dnnspec.engine.distill import Distiller
from dnnspec.engine.losses import binary_cross_entropy, softmax_cross_entropy
from dnnspec.engine.net import Net
from dnnspec.engine.trainer import evaluate, fit
from dnnspec.errors import SpecError, UsageError
from dnnspec.schema import AUGMENT


def step(kind, **named):
    return ir.Step(kind, ir.FrozenDict(AUGMENT[kind].bind([], named)[0]))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# --- the losses against their formulas ---------------------------------------------------------


@pytest.mark.parametrize("lam,e", [(0.3, 0.0), (0.8, 0.1), (0.5, 0.0), (0.0, 0.2)])
def test_soft_target_cross_entropy_is_the_formula_with_gradient_p_minus_t(lam, e):
    rng = np.random.default_rng(1)
    n, k = 7, 5
    z = rng.normal(size=(n, k)) * 3
    y = rng.integers(0, k, n)
    perm = rng.permutation(n)
    onehot = np.eye(k)
    t = (1 - e) * (lam * onehot[y] + (1 - lam) * onehot[y[perm]]) + e / k
    p = softmax(z)
    loss, d = softmax_cross_entropy(z, y, label_smoothing=e, mix=(perm, lam))
    assert loss == pytest.approx(-np.mean((t * np.log(p)).sum(1)), rel=1e-12)
    np.testing.assert_allclose(d, (p - t) / n, rtol=1e-10, atol=1e-15)
    num = numeric_grad(lambda: softmax_cross_entropy(z, y, grad=False, label_smoothing=e, mix=(perm, lam))[0], z,
                       h=1e-5)  # not 1e-6: the loss's rounding over 2h would swamp its smallest components
    assert rel_error(d, num) < 1e-6
    if e == 0:  # the mixup paper's form: the two labels' losses, weighted
        mixed = lam * softmax_cross_entropy(z, y)[0] + (1 - lam) * softmax_cross_entropy(z, y[perm])[0]
        assert loss == pytest.approx(mixed, rel=1e-12)


def test_a_row_mixed_with_its_own_label_keeps_the_whole_weight_on_it():
    z = np.zeros((2, 3))
    y, perm = np.array([1, 1]), np.array([1, 0])  # both rows' partners have label 1 too
    _, d = softmax_cross_entropy(z, y, mix=(perm, 0.3))
    np.testing.assert_allclose(d * 2, [[1 / 3, 1 / 3 - 1, 1 / 3]] * 2, rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 1), (6, 4)])
def test_mixed_binary_cross_entropy_mixes_the_targets_linearly(shape):
    rng = np.random.default_rng(2)
    z = rng.normal(size=shape) * 2
    t = rng.integers(0, 2, shape).astype(np.float64)
    perm, lam = rng.permutation(shape[0]), 0.35
    tm = lam * t + (1 - lam) * t[perm]
    s = 1 / (1 + np.exp(-z))
    loss, d = binary_cross_entropy(z, t, mix=(perm, lam))
    assert loss == pytest.approx(-np.mean(tm * np.log(s) + (1 - tm) * np.log(1 - s)), rel=1e-12)
    np.testing.assert_allclose(d, (s - tm) / z.size, rtol=1e-10)
    num = numeric_grad(lambda: binary_cross_entropy(z, t, grad=False, mix=(perm, lam))[0], z, h=1e-5)
    assert rel_error(d, num) < 1e-6


@pytest.mark.parametrize("e", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lam_one_is_the_plain_loss_bit_for_bit(dtype, e):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(32, 10)) * 4).astype(dtype)
    y = rng.integers(0, 10, 32)
    perm = rng.permutation(32)
    plain = softmax_cross_entropy(z, y, label_smoothing=e)
    mixed = softmax_cross_entropy(z, y, label_smoothing=e, mix=(perm, 1.0))
    assert plain[0] == mixed[0] and np.array_equal(plain[1], mixed[1])
    zb, tb = z[:, :3], rng.integers(0, 2, (32, 3))
    plain, mixed = binary_cross_entropy(zb, tb), binary_cross_entropy(zb, tb, mix=(perm, 1.0))
    assert plain[0] == mixed[0] and np.array_equal(plain[1], mixed[1])


# --- mixing the batch ----------------------------------------------------------------------------


def test_mixup_is_the_convex_combination_drawn_in_the_documented_order():
    x = np.random.default_rng(4).random((9, 1, 5, 5)).astype(np.float32)
    out, mix = Mixer([step("mixup", alpha=0.4)], (1, 5, 5))(x, np.random.default_rng(7))
    ref = np.random.default_rng(7)
    ref.random()  # which op
    lam = ref.beta(0.4, 0.4)
    perm = ref.permutation(9)
    assert mix.lam == lam and np.array_equal(mix.perm, perm)
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[perm], rtol=1e-6, atol=1e-7)
    assert out.dtype == np.float32 and not np.shares_memory(out, x)


def test_mixup_mixes_vectors_and_casts_integers_to_float32():
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    out, mix = Mixer([step("mixup", alpha=1.0)], (2,))(x, np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mix.lam * x + (1 - mix.lam) * x[mix.perm], rtol=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_lam_is_exactly_the_area_each_image_keeps(seed):
    n, c, h, w = 8, 2, 7, 9
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, c, h, w)).copy()
    out, mix = Mixer([step("cutmix", alpha=1.0, p=1.0)], (c, h, w))(x, np.random.default_rng(seed))
    moved = mix.perm != np.arange(n)
    # each pixel holds the index of the image it came from: its own, or its partner's inside the box
    assert np.all((out == x) | (out == mix.perm[:, None, None, None]))
    boxes = out[moved] != x[moved]
    assert np.all(boxes == boxes[:1]) and np.all(boxes[:, :1] == boxes)  # one box, all channels
    if moved.any():
        assert mix.lam == pytest.approx(1 - boxes[0, 0].mean(), abs=1e-12)


def test_cutmix_box_has_side_sqrt_one_minus_lam_and_is_cut_at_the_border():
    assert cutmix_box(0.75, 8, 8, 4, 4) == (2, 6, 2, 6)  # sqrt(0.25) = 1/2 of each side
    assert box_area(cutmix_box(0.75, 8, 8, 4, 4)) / 64 == 0.25
    assert cutmix_box(0.75, 8, 8, 0, 7) == (0, 2, 5, 8)  # a corner keeps a quarter of the box
    assert box_area(cutmix_box(1.0, 8, 8, 3, 3)) == 0 and box_area(cutmix_box(0.0, 8, 8, 4, 4)) == 64


def test_which_op_a_batch_gets_follows_the_probabilities():
    x = np.zeros((4, 1, 4, 4), np.float32)
    mixer = Mixer([step("cutmix", p=0.5), step("mixup", p=0.6)], (1, 4, 4))
    rng = np.random.default_rng(5)
    untouched = sum(mixer(x, rng)[1] is None for _ in range(4000)) / 4000
    assert untouched == pytest.approx(0.5 * 0.4, abs=0.025)  # neither cutmix (p 0.5) nor then mixup (p 0.6)
    off = Mixer([step("mixup", p=0.0)], (1, 4, 4))
    assert all(off(x, rng)[0] is x for _ in range(50))


def test_the_per_image_augmenter_leaves_mixing_to_the_mixer():
    aug = Augmenter([step("mixup"), step("cutmix")], (1, 4, 4))
    assert not aug and aug.steps == ()
    assert Mix(np.array([2, 0, 1]), 0.3).dominant(np.array([5, 6, 7])).tolist() == [7, 5, 6]
    assert Mix(np.array([2, 0, 1]), 0.5).dominant(np.array([5, 6, 7])).tolist() == [5, 6, 7]


# --- training ------------------------------------------------------------------------------------

BLOBS = """
input [2]
classes 3
augment {{
  {aug}
}}
layers {{
  dense 16
  relu
  dense 3
  softmax
}}
loss cross_entropy label_smoothing=0.05
optimizer adam lr=0.01
train epochs=6 batch=32 seed=3
"""

IMAGES = """
input image[1, 6, 6]
classes 2
augment {
  flip vertical  # the classes are left and right halves: a horizontal flip would swap them
  cutmix alpha=1.0 p=0.5
  mixup alpha=0.2
}
layers {
  flatten
  dense 16
  relu
  dense 2
  softmax
}
optimizer adam lr=0.01
train epochs=10 batch=16 seed=1 validation=0
"""


def blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y


def bars(n=160, seed=0):
    """6x6 images: a bright left half (class 0) or right half (class 1), with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.random((n, 1, 6, 6)).astype(np.float32) * 0.5
    x[y == 0, :, :, :3] += 0.5
    x[y == 1, :, :, 3:] += 0.5
    return x, y


def weights(net):
    return {k: v.copy() for k, v in net.params.items()}


def test_mixup_trains_and_validation_is_never_mixed():
    x, y = blobs()
    xv, yv = blobs(200, seed=1)
    net = Net(frontend.parse(BLOBS.format(aug="mixup alpha=0.4")))
    plain_loss = net.loss_fn
    h = fit(net, x, y, x_val=xv, y_val=yv, progress=False)
    assert h["loss"][-1] < h["loss"][0] and h["val_accuracy"][-1] > 0.9
    assert net.loss_fn is plain_loss
    assert h["val_loss"][-1] == pytest.approx(evaluate(net, xv, yv)["loss"], rel=1e-12)


def test_cutmix_and_mixup_train_on_images():
    x, y = bars()
    net = Net(frontend.parse(IMAGES))
    before = evaluate(net, x, y)["loss"]
    h = fit(net, x, y, progress=False)
    assert h["loss"][-1] < h["loss"][0]
    assert evaluate(net, x, y)["loss"] < before and (net.predict(x) == y).mean() > 0.9


def test_same_seed_same_weights_and_resume_equals_one_run(tmp_path):
    x, y = bars(64)
    runs = []
    for _ in range(2):
        net = Net(frontend.parse(IMAGES))
        fit(net, x, y, epochs=3, progress=False)
        runs.append(weights(net))
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = Net(frontend.parse(IMAGES))
    fit(other, x, y, epochs=3, seed=2, progress=False)
    assert not all(np.array_equal(runs[0][k], other.params[k]) for k in runs[0])
    first = Net(frontend.parse(IMAGES))
    fit(first, x, y, epochs=2, run_dir=tmp_path / "r", progress=False)
    resumed = Net(frontend.parse(IMAGES))
    fit(resumed, x, y, epochs=3, run_dir=tmp_path / "r", resume=True, progress=False)
    assert all(np.array_equal(runs[0][k], resumed.params[k]) for k in runs[0])


def test_every_step_loss_mixes_the_labels_as_the_batch_was_mixed():
    """The loss the trainer hands the net is the mixed one: recomputed from the step's logits and Mix."""
    x, y = blobs(64)
    net = Net(frontend.parse(BLOBS.format(aug="mixup alpha=1.0")))
    seen, inner = [], net.loss_and_grads

    def spy(xb, yb, rng=None):
        loss, grads = inner(xb, yb, rng)
        seen.append((loss, net.last_logits.copy(), np.array(yb), net.loss_fn))
        return loss, grads

    net.loss_and_grads = spy
    fit(net, x, y, epochs=1, validation=0, progress=False)
    for loss, z, yb, fn in seen:
        perm, lam = fn.keywords["mix"]
        assert loss == softmax_cross_entropy(z, yb, label_smoothing=0.05, mix=(perm, lam))[0]
        assert 0 < lam < 1


def test_distillation_with_mixup_shows_the_teacher_the_mixed_batch():
    x, y = blobs(64)
    net = Net(frontend.parse(BLOBS.format(aug="mixup alpha=1.0")))
    seen_by_teacher, seen_by_student = [], []
    inner = net.loss_and_grads

    def spy(xb, yb, rng=None):
        seen_by_student.append((np.array(xb, copy=True), net.loss_fn.keywords["hard"].keywords["mix"]))
        return inner(xb, yb, rng)

    def teacher(xb):
        seen_by_teacher.append(np.array(xb, copy=True))
        return np.zeros((len(xb), 3))

    net.loss_and_grads = spy
    fit(net, x, y, epochs=1, validation=0, progress=False, teacher=Distiller(teacher, weight=0.5))
    assert len(seen_by_teacher) == len(seen_by_student) == 2
    rows = {r.tobytes() for r in x}
    for t, (s, mix) in zip(seen_by_teacher, seen_by_student):
        assert np.array_equal(t, s) and isinstance(mix, Mix)
        assert any(r.tobytes() not in rows for r in t)  # mixed indeed


def test_a_hand_made_model_with_mse_and_mixup_is_a_usage_error():
    model = dataclasses.replace(ir.model_from_layers((2,), [("dense", {"units": 1})], loss="mse"),
                                augment=(step("mixup"),))
    with pytest.raises(UsageError, match="mixup mixes the labels, which needs loss cross_entropy or "
                                         "binary_cross_entropy; this model trains with mse"):
        fit(Net(model), np.zeros((8, 2), np.float32), np.zeros((8, 1), np.float32), progress=False)


# --- the spec ------------------------------------------------------------------------------------


def test_mixup_on_vectors_is_accepted_and_a_per_image_op_still_is_not():
    assert [s.kind for s in frontend.parse(BLOBS.format(aug="mixup")).augment] == ["mixup"]
    with pytest.raises(SpecError, match="augment needs an image input"):
        frontend.parse(BLOBS.format(aug="mixup\n  flip"))


def test_mixup_options_are_checked():
    with pytest.raises(SpecError, match=r"mixup alpha: must be in \(0, 100\], found 0"):
        frontend.parse(BLOBS.format(aug="mixup alpha=0"))
    with pytest.raises(SpecError, match=r"cutmix p: must be in \[0, 1\], found 1.5"):
        frontend.parse(IMAGES.replace("p=0.5", "p=1.5"))
