"""On-the-fly augmentation (dnnspec/augment.py): the vectorised cores with explicit
parameters against NumPy/SciPy references, then the random sampling of Augmenter."""

from __future__ import annotations

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.augment import Augmenter, affine_matrices, affine_sample, crop, default_value_range, erase
from dnnspec.schema import AUGMENT, Quantity, Range


def step(kind, *positional, **named):
    values, explicit = AUGMENT[kind].bind(list(positional), named)
    return ir.Step(kind, ir.FrozenDict(values), explicit=frozenset(explicit))


def batch(n=6, shape=(1, 9, 9), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)


def mats(n, theta=0.0, s=1.0, tx=0.0, ty=0.0, h=9, w=9):
    full = np.full
    return affine_matrices(full(n, theta, float), full(n, s, float), full(n, tx, float), full(n, ty, float), h, w)


# --- affine core ---------------------------------------------------------------------


def test_rotation_0_and_scale_1_are_identity():
    x = batch(shape=(3, 7, 5))
    np.testing.assert_array_equal(affine_sample(x, mats(6, h=7, w=5)), x)


@pytest.mark.parametrize("theta, k", [(90, 1), (180, 2), (-90, -1), (270, 3)])
def test_rotation_by_quarter_turns_equals_rot90(theta, k):
    """Positive angles turn counter-clockwise on screen, as np.rot90 does from axis H towards W."""
    x = batch(shape=(2, 8, 8))
    np.testing.assert_allclose(affine_sample(x, mats(6, theta=theta, h=8, w=8)),
                               np.rot90(x, k, axes=(-2, -1)), atol=1e-4)


def test_translate_by_k_then_minus_k_restores_interior():
    x = batch(shape=(1, 12, 10))
    k = 3
    moved = affine_sample(x, mats(6, tx=k, ty=-2, h=12, w=10))
    np.testing.assert_array_equal(moved[:, :, :-2, k:], x[:, :, 2:, :-k])  # content moved right and up
    assert (moved[:, :, :, :k] == 0).all()
    back = affine_sample(moved, mats(6, tx=-k, ty=2, h=12, w=10))
    np.testing.assert_array_equal(back[:, :, 2:, :-k], x[:, :, 2:, :-k])


def test_subpixel_shift_is_bilinear():
    x = batch(shape=(1, 6, 6))
    out = affine_sample(x, mats(6, tx=0.25, h=6, w=6))
    # out[q] = 0.75 x[q] + 0.25 x[q-1]; the first column blends with the zero padding.
    np.testing.assert_allclose(out[..., 1:], 0.75 * x[..., 1:] + 0.25 * x[..., :-1], rtol=1e-5)
    np.testing.assert_allclose(out[..., 0], 0.75 * x[..., 0], rtol=1e-5)


@pytest.mark.parametrize("theta, s, tx, ty", [(17.0, 1.0, 0, 0), (-33.0, 1.2, 1.5, -0.7), (5.0, 0.8, -2.2, 3.1)])
def test_general_affine_matches_scipy(theta, s, tx, ty):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = batch(n=3, shape=(2, 11, 13))
    a = mats(3, theta, s, tx, ty, h=11, w=13)
    got = affine_sample(x, a)
    # scipy maps output (row, col) to input (row, col): swap our (x, y) order; pad-with-zeros mode.
    matrix = np.array([[a[0, 1, 1], a[0, 1, 0]], [a[0, 0, 1], a[0, 0, 0]]])
    offset = [a[0, 1, 2], a[0, 0, 2]]
    for i in range(3):
        for c in range(2):
            ref = ndimage.affine_transform(x[i, c].astype(np.float64), matrix, offset, order=1,
                                           mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(got[i, c], ref, atol=2e-3)


def test_scale_zooms_about_the_centre():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 6] = 100.0  # two pixels right of the centre (4, 4)
    out = affine_sample(x, mats(1, s=2.0))
    assert out[0, 0, 4, 8] == pytest.approx(100.0)  # now four pixels right


# --- crop, flip, erase ---------------------------------------------------------------


def test_crop_equals_pad_and_slice():
    x = batch(n=5, shape=(2, 6, 7))
    dy, dx = np.array([-2, 0, 1, 2, -1]), np.array([1, -2, 0, 2, -1])
    got = crop(x, dy, dx)
    p = 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for i in range(5):
        np.testing.assert_array_equal(got[i], padded[i, :, p + dy[i]:p + dy[i] + 6, p + dx[i]:p + dx[i] + 7])


def test_erase_fills_exactly_the_rectangle():
    x = batch(n=3, shape=(2, 8, 8))
    ref = x.copy()
    ref[0, :, 1:4, 2:7] = -5.0
    ref[2, :, 0:8, 7:8] = -5.0
    got = erase(x.copy(), np.array([True, False, True]),
                np.array([1, 0, 0]), np.array([2, 0, 7]), np.array([3, 2, 8]), np.array([5, 2, 1]), -5.0)
    np.testing.assert_array_equal(got, ref)


def test_flipping_twice_is_identity():
    x = batch(shape=(3, 5, 7))
    rng = np.random.default_rng(0)
    for direction in ("horizontal", "vertical"):
        aug = Augmenter([step("flip", direction, p=1.0)], (3, 5, 7), (0, 255))
        once = aug(x, rng)
        axis = -1 if direction == "horizontal" else -2
        np.testing.assert_array_equal(once, np.flip(x, axis))
        np.testing.assert_array_equal(aug(once, rng), x)


def test_flip_subset_has_probability_p():
    x = batch(n=2000, shape=(1, 3, 3))
    out = Augmenter([step("flip", "horizontal", p=0.3)], (1, 3, 3), (0, 255))(x, np.random.default_rng(1))
    flipped = (out == x[..., ::-1]).all(axis=(1, 2, 3))
    kept = (out == x).all(axis=(1, 2, 3))
    assert (flipped | kept).all()
    assert abs(flipped.mean() - 0.3) < 0.04


# --- Augmenter: sampling, ranges, reproducibility ------------------------------------

FULL = [step("erase", p=0.5), step("crop", 2), step("flip", "horizontal"), step("translate", Quantity(2, "px")),
        step("rotate", Quantity(15, "deg")), step("scale", Range(0.8, 1.2)), step("contrast", Range(0.5, 1.5)),
        step("brightness", 0.2)]


def test_rotate_0_and_scale_1_steps_are_identity():
    x = batch()
    aug = Augmenter([step("rotate", 0.0), step("scale", 1.0)], (1, 9, 9), (0, 255))
    np.testing.assert_array_equal(aug(x, np.random.default_rng(0)), x)


def test_values_stay_in_range_and_input_is_untouched():
    x = batch(n=64, shape=(3, 16, 16))
    x[:, :, :4] = 255.0
    x[:, :, 4:8] = 0.0
    before = x.copy()
    for lo, hi in ((0.0, 255.0), (10.0, 200.0)):
        out = Augmenter(FULL, (3, 16, 16), (lo, hi))(x, np.random.default_rng(2))
        assert out.dtype == np.float32 and out.shape == x.shape
        assert out.min() >= lo and out.max() <= hi
    np.testing.assert_array_equal(x, before)


def test_same_seed_same_batch_and_new_variants_each_call():
    x = batch(n=16)
    aug = Augmenter(FULL, (1, 9, 9), (0, 255))
    a = aug(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, aug(x, np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    first, second = aug(x, rng), aug(x, rng)
    assert not np.array_equal(first, second)


def test_translate_draws_follow_the_documented_order():
    """Random translate = the affine core at (tx, ty) drawn uniform in [-a, a], tx first."""
    x = batch(n=8, shape=(1, 10, 12))
    out = Augmenter([step("translate", 0.25)], (1, 10, 12), (0, 255))(x, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    tx, ty = rng.uniform(-3.0, 3.0, 8), rng.uniform(-2.5, 2.5, 8)  # 0.25 of W=12 and H=10
    ref = affine_sample(x, affine_matrices(np.zeros(8), np.ones(8), tx, ty, 10, 12))
    np.testing.assert_allclose(out, np.clip(ref, 0, 255), rtol=1e-6)


def test_contrast_scales_deviations_from_each_image_mean():
    x = np.random.default_rng(0).uniform(100, 150, (4, 2, 5, 5)).astype(np.float32)
    out = Augmenter([step("contrast", Range(1.5, 1.5))], (2, 5, 5), (0, 255))(x, np.random.default_rng(0))
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, m + 1.5 * (x - m), rtol=1e-5)


def test_brightness_adds_one_offset_per_image_within_delta():
    x = np.full((200, 1, 4, 4), 100.0, np.float32)
    x[:, :, 0, 0] = 120.0
    out = Augmenter([step("brightness", 0.1)], (1, 4, 4), (0, 255))(x, np.random.default_rng(0))
    shift = out - x
    np.testing.assert_allclose(shift, shift[:, :, :1, :1] * np.ones_like(shift), atol=1e-4)
    assert np.abs(shift).max() <= 25.5 + 1e-4 and shift.std() > 5


def test_erase_area_within_range():
    x = np.full((500, 1, 20, 20), 9.0, np.float32)
    out = Augmenter([step("erase", p=1.0, area=Range(0.1, 0.2), value=0.0)], (1, 20, 20), (0, 255))(
        x, np.random.default_rng(0))
    frac = (out == 0).mean(axis=(1, 2, 3))
    assert (frac > 0).all() and frac.min() >= 0.05 and frac.max() <= 0.3
    assert 0.12 < frac.mean() < 0.18


def test_crop_step_shifts_by_at_most_padding():
    x = batch(n=50, shape=(1, 8, 8))
    out = Augmenter([step("crop", 1)], (1, 8, 8), (0, 255))(x, np.random.default_rng(0))
    shifts = [crop(x, np.full(50, dy), np.full(50, dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    matched = np.stack([(out == s).all(axis=(1, 2, 3)) for s in shifts])
    assert matched.any(axis=0).all() and matched.sum(axis=1).min() > 0


def test_from_model_default_value_range_and_uint8_input():
    m = ir.model_from_layers((1, 4, 4), [("flatten", {}), ("dense", {"units": 2}), ("softmax", {})], scale=1 / 255)
    m = ir.Model(**{**{f: getattr(m, f) for f in m.__dataclass_fields__}, "augment": (step("brightness", 1.0),)})
    aug = Augmenter.from_model(m)
    assert aug.value_range == pytest.approx((0.0, 255.0))
    assert Augmenter.from_model(m, np.zeros(3, np.uint8)).value_range == (0.0, 255.0)
    out = aug(np.full((8, 1, 4, 4), 128, np.uint8), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255


def test_default_value_range():
    assert default_value_range(np.array([3, 7], np.uint8), 1.0) == (0.0, 255.0)
    assert default_value_range(np.array([0.2, 0.9], np.float32), 1.0) == (0.0, 1.0)
    assert default_value_range(np.array([-2.0, 3.0], np.float32), 1.0) == (-2.0, 3.0)
    assert default_value_range(None, 0.5) == (0.0, 2.0)


def test_rejects_vector_inputs():
    with pytest.raises(ValueError, match="image inputs"):
        Augmenter([step("flip")], (784,))
