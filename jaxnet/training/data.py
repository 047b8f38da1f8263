"""The training data's split, seeded epoch order and mean (on the host), and augmentation (on
the device). Images stay uint8; the one preprocessing (scale, subtract the mean) is
:func:`jaxnet.step.preprocess`, inside the step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet._validate import int_at_least


class TrainData(NamedTuple):
    """What :func:`jaxnet.training.fit` trains and validates on.

    Attributes:
        train_images: uint8 ``(N, H, W, C)``.
        train_labels: int ``(N,)``.
        val_images: uint8 ``(V, H, W, C)``; ``V`` may be 0 (no validation).
        val_labels: int ``(V,)``.
        mean: float32 ``(C,)``, the training split's mean in the units the network sees
            (:func:`channel_mean` with the run's ``pixel_scale``).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    mean: np.ndarray


def train_val_split(
    images: np.ndarray, labels: np.ndarray, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``n_val`` of the ``N`` examples (the starters: 2000), chosen by a permutation
    seeded with ``seed``, for validation.

    Both parts keep the original relative order (shuffling is done per epoch by the caller).

    Returns:
        ``(train_images (N - n_val, ...), train_labels (N - n_val,), val_images (n_val, ...),
        val_labels (n_val,))``, new arrays of the input dtypes.

    Raises:
        ValueError: lengths differ or ``n_val`` is not in ``[0, N)``.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images has {n} examples but labels has {len(labels)}")
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must be in [0, {n}) for {n} examples, got {n_val}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """A seeded shuffle of ``range(n)`` for one epoch, cut into full batches: int32
    ``(n // batch_size, batch_size)`` indices into the training arrays.

    The permutation depends on ``(seed, epoch)`` only, so a resumed run sees the same order.
    The last ``n % batch_size`` indices of the permutation are dropped (a different set each
    epoch), so every batch has the same shape and the train step never recompiles.

    Raises:
        ValueError: ``batch_size`` is not in ``[1, n]``.
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] for {n} examples, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def channel_mean(images: np.ndarray, scale: float = 1 / 255) -> np.ndarray:
    """Per-channel mean of ``images * scale`` (the mean the step subtracts); call it on the
    training split only. Summed exactly in integers (a histogram per channel), so the result does
    not depend on summation order.

    Args:
        images: uint8 ``(N, H, W, C)``.
        scale: the factor the step applies to pixels (1/255: ``[0, 1]``; 1: raw values).

    Returns:
        float32 ``(C,)``: one mean for MNIST, the RGB means for CIFAR-10.

    Raises:
        ValueError: ``images`` is not 4-d or is empty.
        TypeError: ``images`` is not uint8.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    pixels = images.reshape(-1, images.shape[-1])
    levels = np.arange(256, dtype=np.float64)
    sums = [np.bincount(pixels[:, c], minlength=256) @ levels for c in range(pixels.shape[1])]
    return (np.asarray(sums) / pixels.shape[0] * scale).astype(np.float32)


def augment(
    key: jax.Array, images: jax.Array | np.ndarray, pad: int = 4, flip: bool = True, cutout: int = 0
) -> jax.Array:
    """Random crop with zero padding, random horizontal flip and cutout, per image; jit-able.

    Each image is zero-padded by ``pad`` pixels on every side, cropped back to ``H x W`` at an
    offset drawn uniformly from ``0 .. 2 * pad`` in each direction, then mirrored left-right with
    probability 1/2 if ``flip`` (not for digits, whose mirror images are not digits). With
    ``cutout = s > 0`` a square of ``s x s`` pixels centred on a uniformly drawn pixel (cut off
    at the edges) is then set to 0, black like the crop's padding (DeVries and Taylor, 2017).
    The same key gives the same result.

    Args:
        key: a JAX PRNG key.
        images: ``(N, H, W, C)``, uint8 or float.
        pad: padding in pixels, a Python int ``>= 0`` (static under ``jit``).
        flip: whether to mirror half of the images left-right (static under ``jit``).
        cutout: side of the blacked-out square, a Python int ``>= 0`` (0: none).

    Returns:
        ``(N, H, W, C)``, the dtype of ``images``.

    Raises:
        ValueError: ``images`` is not 4-d, or ``pad`` or ``cutout`` is negative.
        TypeError: ``pad`` or ``cutout`` is not an int.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    pad, cutout = int_at_least("pad", pad, 0), int_at_least("cutout", cutout, 0)
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5 if flip else 0.0, (n,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    out = jax.vmap(one)(padded, offsets, flips)
    if cutout:
        size = jnp.array([[h], [w]])
        starts = jax.random.randint(jax.random.fold_in(key, 1), (n, 2, 1), 0, size) - cutout // 2
        rows = (jnp.arange(h) >= starts[:, 0]) & (jnp.arange(h) < starts[:, 0] + cutout)
        cols = (jnp.arange(w) >= starts[:, 1]) & (jnp.arange(w) < starts[:, 1] + cutout)
        inside = rows[:, :, None, None] & cols[:, None, :, None]  # (n, h, w, 1)
        out = jnp.where(inside, jnp.zeros((), out.dtype), out)
    return out
