"""The training data's split, epoch order, mean and on-device augmentation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxnet.training.data import augment, channel_mean, epoch_batches, train_val_split

# --- Split, shuffling, mean -----------------------------------------------------------------------


def test_train_val_split():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    labels = np.arange(100, dtype=np.int32)
    tx, ty, vx, vy = train_val_split(images, labels, 20, seed=0)
    assert tx.shape == (80, 2, 2, 3) and vx.shape == (20, 2, 2, 3)
    assert tx.dtype == np.uint8 and ty.dtype == np.int32
    assert sorted([*ty, *vy]) == list(range(100))  # disjoint and complete
    assert (np.diff(ty) > 0).all() and (np.diff(vy) > 0).all()  # original order kept
    np.testing.assert_array_equal(tx[:, 0, 0, 0], ty)  # images follow their labels
    again = train_val_split(images, labels, 20, seed=0)
    np.testing.assert_array_equal(again[3], vy)
    assert not np.array_equal(train_val_split(images, labels, 20, seed=1)[3], vy)
    with pytest.raises(ValueError, match="n_val"):
        train_val_split(images, labels, 100, seed=0)
    with pytest.raises(ValueError, match="labels has 99"):
        train_val_split(images, labels[:99], 10, seed=0)


def test_epoch_batches():
    order = epoch_batches(103, 10, seed=7, epoch=0)
    assert order.shape == (10, 10) and order.dtype == np.int32
    assert len(np.unique(order)) == 100 and order.max() < 103
    np.testing.assert_array_equal(order, epoch_batches(103, 10, seed=7, epoch=0))
    assert not np.array_equal(order, epoch_batches(103, 10, seed=7, epoch=1))
    assert not np.array_equal(order, epoch_batches(103, 10, seed=8, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(5, 6, seed=0, epoch=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_mean(channels):
    images = np.random.default_rng(0).integers(0, 256, (17, 5, 6, channels), dtype=np.uint8)
    mean = channel_mean(images)
    assert mean.shape == (channels,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, images.astype(np.float64).mean(axis=(0, 1, 2)) / 255, 1e-6)
    raw = channel_mean(images, scale=1.0)  # the CIFAR-10 starter's raw pixels
    np.testing.assert_allclose(raw, images.astype(np.float64).mean(axis=(0, 1, 2)), 1e-6)
    with pytest.raises(TypeError, match="uint8"):
        channel_mean(images.astype(np.float32))
    with pytest.raises(ValueError, match="N, H, W, C"):
        channel_mean(images[0])


# --- augment (JAX, on device) ---------------------------------------------------------------------


def _candidates(image: np.ndarray, pad: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = [padded[y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("pad", [0, 2])
def test_augment_is_a_crop_and_flip(dtype, pad):
    images = np.random.default_rng(2).integers(1, 256, (6, 7, 5, 3)).astype(dtype)
    out = jax.jit(augment, static_argnames="pad")(jax.random.key(0), images, pad=pad)
    assert out.shape == images.shape and out.dtype == dtype
    out = np.asarray(out)
    for image, result in zip(images, out, strict=True):
        assert any(np.array_equal(result, c) for c in _candidates(image, pad))


def test_augment_seeded_and_varied():
    images = np.random.default_rng(3).integers(1, 256, (256, 8, 8, 3), dtype=np.uint8)
    aug = jax.jit(augment)
    a = np.asarray(aug(jax.random.key(1), images))
    np.testing.assert_array_equal(a, np.asarray(aug(jax.random.key(1), images)))
    assert not np.array_equal(a, np.asarray(aug(jax.random.key(2), images)))
    # Over 256 images: about half are flipped, and the crop offsets cover the 9x9 choices.
    picks = []
    for result, image in zip(a, images, strict=True):
        matches = [np.array_equal(result, c) for c in _candidates(image, 4)]
        assert sum(matches) == 1
        picks.append(matches.index(True))
    picks = np.array(picks)
    assert 0.35 < (picks >= 81).mean() < 0.65
    assert len(np.unique(picks % 81)) > 60
    with pytest.raises(ValueError, match="pad"):
        augment(jax.random.key(0), images, pad=-1)
    with pytest.raises(TypeError, match="pad must be an int"):
        augment(jax.random.key(0), images, pad=1.5)
    with pytest.raises(ValueError, match="N, H, W, C"):
        augment(jax.random.key(0), images[0])


@pytest.mark.parametrize("size", [1, 3, 4])
def test_cutout_blacks_out_one_square_per_image(size):
    # Images with no black pixel: after cutout (no crop, no flip) the black pixels of each image
    # form one s x s square, cut off where it reaches past an edge, at a place that varies.
    images = np.random.default_rng(4).integers(1, 256, (64, 9, 7, 3), dtype=np.uint8)
    out = np.asarray(augment(jax.random.key(5), images, 0, False, size))
    corners = set()
    for image, result in zip(images, out, strict=True):
        black = np.all(result == 0, axis=-1)
        np.testing.assert_array_equal(result[~black], image[~black])
        rows, cols = np.flatnonzero(black.any(1)), np.flatnonzero(black.any(0))
        assert black.sum() == len(rows) * len(cols)  # a rectangle ...
        assert black[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
        for idx, n in ((rows, 9), (cols, 7)):  # ... s long unless cut off by an edge
            assert len(idx) == size or (len(idx) < size and (idx[0] == 0 or idx[-1] == n - 1))
        corners.add((rows[0], cols[0]))
    assert len(corners) > 20


def test_no_cutout_is_the_crop_and_flip_bit_for_bit():
    images = np.random.default_rng(6).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    key = jax.random.key(7)
    np.testing.assert_array_equal(augment(key, images, 2, True), augment(key, images, 2, True, 0))
    with pytest.raises(ValueError, match="cutout"):
        augment(key, images, 2, True, -1)
