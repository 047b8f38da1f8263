"""Image files as training-like uint8 arrays: MNIST digit geometry, colour, modes, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jaxnet import images

REAL = os.environ.get("JAXNET_DATA")


def stroke(height: int = 300, width: int = 200, ink: int = 0, paper: int = 255) -> np.ndarray:
    """A grey picture of a thick, lopsided 'L' (ink on paper), away from the edges."""
    a = np.full((height, width), paper, np.uint8)
    a[height // 6 : height - height // 6, width // 4 : width // 4 + width // 8] = ink
    a[height - height // 6 - height // 10 : height - height // 6, width // 4 : 3 * width // 4] = ink
    return a


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    d = digit[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: d.shape[0], : d.shape[1]]
    return float((d * ys).sum() / d.sum()), float((d * xs).sum() / d.sum())


def ink_box(digit: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(digit[..., 0].any(1)), np.flatnonzero(digit[..., 0].any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize(("height", "width"), [(300, 200), (200, 300), (50, 50), (30, 21)])
def test_digit_fills_the_box_keeps_its_aspect_and_is_centred_by_mass(height, width):
    picture = stroke(height, width)
    digit = images.to_digit(Image.fromarray(picture))
    assert digit.shape == (28, 28, 1) and digit.dtype == np.uint8
    assert digit[0].max() == 0 and digit[-1].max() == 0  # light on dark, background black
    assert digit.max() == 255
    h, w = ink_box(digit)
    ink = np.flatnonzero((picture < 128).any(1)), np.flatnonzero((picture < 128).any(0))
    ih, iw = ink[0][-1] - ink[0][0] + 1, ink[1][-1] - ink[1][0] + 1
    assert max(h, w) in (20, 21)  # Lanczos may leave a faint fringe pixel
    assert abs(min(h, w) / max(h, w) - min(ih, iw) / max(ih, iw)) < 0.12
    rows, cols = np.flatnonzero(digit[..., 0].any(1)), np.flatnonzero(digit[..., 0].any(0))
    for centre, ink_at in zip(centre_of_mass(digit), (rows, cols), strict=True):
        if 0 < ink_at[0] and ink_at[-1] < 27:  # else the shift stopped at the frame: still whole
            assert abs(centre - 14) <= 0.5 + 1e-9
        else:
            assert len(ink_at) >= 20


def test_an_mnist_like_digit_is_a_fixed_point():
    once = images.to_digit(Image.fromarray(stroke()))
    twice = images.to_digit(Image.fromarray(once[..., 0]))
    np.testing.assert_array_equal(twice, once)


@pytest.mark.parametrize("invert", ["auto", "yes"])
def test_dark_on_light_is_inverted(invert):
    dark_on_light = images.to_digit(Image.fromarray(stroke(ink=0, paper=255)), invert)
    light_on_dark = images.to_digit(Image.fromarray(stroke(ink=255, paper=0)), "no")
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    np.testing.assert_array_equal(
        images.to_digit(Image.fromarray(stroke(ink=255, paper=0)), "auto"), light_on_dark
    )


def test_invert_no_on_dark_ink_finds_no_digit():
    with pytest.raises(ValueError, match="no digit"):
        images.to_digit(Image.fromarray(stroke(ink=0, paper=255)), "no")


def test_grey_paper_and_faint_ink_are_stretched_like_black_and_white():
    clean = images.to_digit(Image.fromarray(stroke(ink=0, paper=255)))
    dull = images.to_digit(Image.fromarray(stroke(ink=60, paper=140)))
    np.testing.assert_array_equal(dull, clean)


def test_background_noise_is_not_ink():
    rng = np.random.default_rng(0)
    picture = stroke().astype(np.float64) - rng.uniform(0, 40, (300, 200))  # noisy paper
    noisy = images.to_digit(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)))
    clean = images.to_digit(Image.fromarray(stroke()))
    assert ink_box(noisy) == ink_box(clean)
    assert np.abs(noisy.astype(int) - clean.astype(int)).mean() < 3


def _modes(picture: np.ndarray) -> dict[str, Image.Image]:
    grey = Image.fromarray(picture)
    alpha = (255 - picture).astype(np.uint8)  # ink opaque, paper transparent
    rgba = np.dstack([np.zeros_like(picture)] * 3 + [alpha])
    return {
        "L": grey,
        "RGB": grey.convert("RGB"),
        "P": grey.convert("RGB").convert("P"),
        "LA": grey.convert("LA"),
        "RGBA over transparency": Image.fromarray(rgba, "RGBA"),
        "I;16": Image.fromarray(picture.astype(np.uint16) * 257),
    }


@pytest.mark.parametrize("mode", list(_modes(stroke())))
def test_every_mode_gives_the_grey_result(mode):
    picture = stroke()
    expected = images.to_digit(Image.fromarray(picture))
    np.testing.assert_array_equal(images.to_digit(_modes(picture)[mode]), expected)


def test_light_strokes_on_transparency_are_light_on_dark():
    picture = stroke()
    rgba = np.dstack([np.full_like(picture, 255)] * 3 + [(255 - picture).astype(np.uint8)])
    got = images.to_digit(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(got, images.to_digit(Image.fromarray(picture)))


@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (7, 5)])
def test_colour_is_rgb_at_the_network_size(shape):
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = images.to_colour(Image.fromarray(picture))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if shape == (32, 32):
        np.testing.assert_array_equal(out, picture)  # already the size: untouched


def test_colour_keeps_a_flat_colour_and_grey_gets_three_channels():
    flat = images.to_colour(Image.new("RGB", (100, 80), (10, 200, 30)))
    assert (flat == np.array([10, 200, 30], np.uint8)).all()
    grey = images.to_colour(Image.fromarray(stroke()))
    assert (grey == grey[..., :1]).all() and grey.min() < 50 < 200 < grey.max()


@pytest.mark.parametrize(
    ("shape", "expected"), [((28, 28, 1), (28, 28, 1)), ((32, 32, 3), (32, 32, 3))]
)
def test_read_picks_the_conversion(tmp_path, shape, expected):
    out = images.read(save_png(tmp_path, stroke()), shape)
    assert out.shape == expected and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("shape", "invert", "message"),
    [
        ((28, 20, 1), "auto", "inputs"),
        ((28, 28, 2), "auto", "inputs"),
        ((28, 28, 1), "maybe", "invert must be one of"),
        ((32, 32, 3), "maybe", "invert must be one of"),
    ],
)
def test_bad_options_are_value_errors(tmp_path, shape, invert, message):
    with pytest.raises(ValueError, match=message):
        images.read(save_png(tmp_path, stroke()), shape, invert)
    with pytest.raises(ValueError, match=message):  # before the file is even looked at
        images.read(tmp_path / "missing.png", shape, invert)


def save_png(folder, array: np.ndarray):
    """``array`` as ``folder/picture.png``; its path."""
    path = folder / "picture.png"
    Image.fromarray(array).save(path)
    return path


def _truncated_png(path):
    Image.fromarray(stroke()).save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_text("not a picture\n"), "not an image"),
        (lambda p: p.write_bytes(b""), "not an image"),
        (_truncated_png, "damaged or truncated"),
        (lambda p: p.symlink_to(p), "cannot be read (Too many levels of symbolic links)"),
        (lambda p: Image.new("L", (40, 30), 200).save(p), "no digit found"),
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with pytest.raises(images.ImageFileError) as info:
        images.read(path, (28, 28, 1))
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_files(tmp_path, suffix):
    path = tmp_path / f"digit{suffix}"
    Image.fromarray(stroke()).save(path)
    got = images.read(path, (28, 28, 1))
    expected = images.to_digit(Image.fromarray(stroke()))
    if suffix == ".png":  # lossless
        np.testing.assert_array_equal(got, expected)
    else:  # JPEG's ringing beside the strokes may widen the ink's box by a pixel
        assert np.abs(np.subtract(ink_box(got), ink_box(expected))).max() <= 1
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 8


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(wide).save(path, exif=exif)
    assert images.open_image(path).size == (20, 60)


def _real_mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    if not REAL:
        if os.environ.get("CI"):
            pytest.fail("JAXNET_DATA is not set in CI: the real-data test cannot run")
        pytest.skip("JAXNET_DATA is not set")
    from jaxnet import datasets

    dataset = datasets.load_mnist(REAL)
    return dataset.test_images[:n], dataset.test_labels[:n]


def test_real_mnist_digits_come_back_unchanged():
    x, _ = _real_mnist(2000)
    got = np.stack([images.to_digit(Image.fromarray(a[..., 0])) for a in x])
    diff = np.abs(got.astype(int) - x.astype(int))
    full = x.reshape(len(x), -1).max(axis=1) == 255
    assert full.mean() > 0.85
    assert diff[full].max() == 0  # the brightest pixel at 255 already: exactly the same
    assert diff.max() <= 1  # otherwise stretched by at most 255/254
    assert diff.mean() < 0.2


def test_to_grey_is_the_plain_resize_of_to_colour():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    picture = Image.fromarray(rgb)
    grey = images.to_grey(picture, (28, 20))
    assert grey.shape == (28, 20, 1) and grey.dtype == np.uint8
    luma = np.asarray(Image.fromarray(images.to_colour(picture, (28, 20))).convert("L"))
    assert np.abs(grey[..., 0].astype(int) - luma).max() <= 2  # resize and luma commute to 1-2
    same = images.to_grey(Image.fromarray(rgb[:28, :20, 0]), (28, 20))
    np.testing.assert_array_equal(same[..., 0], rgb[:28, :20, 0])  # its size already: unchanged


def test_read_without_centring_is_to_grey(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(stroke()).save(path)
    got = images.read(path, (28, 28, 1), centre=False)
    np.testing.assert_array_equal(got, images.to_grey(Image.fromarray(stroke()), (28, 28)))
    assert got[0, 0, 0] == 255  # the paper stays white: no inversion, no centring


def test_a_file_the_system_refuses_names_the_reason_not_damage(tmp_path, monkeypatch):
    """Permission denied (root reads any file, so the refusal is simulated) is said as such."""
    path = tmp_path / "locked.png"
    Image.fromarray(stroke()).save(path)

    def refuse(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(images.ImageFileError) as info:
        images.open_image(path)
    assert str(info.value) == f"{path}: cannot be read (Permission denied)"
