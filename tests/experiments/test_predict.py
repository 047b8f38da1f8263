"""experiments.predict: a run's network on image files, its outputs, its errors, real digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from run_folders import CIFAR_CLASSES, random_params, write_run
from run_helpers import run as run_command

import jaxnet
from experiments import mnist, predict, trained_run
from jaxnet import architectures, images

REAL = os.environ.get("JAXNET_DATA")
SMALL = ("--iterations", "60", "--batch-size", "16", "--val-size", "50", "--no-progress")
PNG = b"\x89PNG\r\n\x1a\n"


def digit_picture(seed: int) -> np.ndarray:
    """Dark strokes on white paper, a different shape for each seed."""
    rng = np.random.default_rng(seed)
    a = np.full((90, 70), 255, np.uint8)
    for _ in range(3):
        top, left = rng.integers(5, 50), rng.integers(5, 40)
        a[top : top + rng.integers(8, 35), left : left + rng.integers(4, 25)] = 0
    return a


def save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mnist_run(tmp_path) -> Path:
    return write_run(tmp_path / "run", "mnist")


@pytest.fixture
def pictures(tmp_path) -> list[Path]:
    return [save(tmp_path / f"d{i}.png", digit_picture(i)) for i in range(3)]


def expected_probabilities(folder: Path, paths: list[Path]) -> np.ndarray:
    """Softmax of jaxnet.forward on the converted images, prepared by hand from config.json."""
    config = json.loads((folder / "config.json").read_text())
    arch = architectures.get(config["architecture"])
    params = random_params(config["architecture"])
    x = np.stack([images.read(p, arch.input_shape) for p in paths]).astype(np.float32)
    x = x * np.float32(config["input"]["scale"]) - np.asarray(config["input"]["mean"], np.float32)
    return np.asarray(jax.nn.softmax(jaxnet.forward(arch, params, jnp.asarray(x))))


def test_one_line_per_image_with_the_top_classes(mnist_run, pictures, capsys):
    assert predict.main([str(mnist_run), *map(str, pictures), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    probs = expected_probabilities(mnist_run, pictures)
    assert len(lines) == len(pictures)
    for line, path, p in zip(lines, pictures, probs, strict=True):
        first, second = np.argsort(-p)[:2]
        assert line == f"{path}: {first} {p[first]:.1%}, {second} {p[second]:.1%}"


def test_json_lists_the_classes_with_their_probabilities(mnist_run, pictures, capsys):
    assert predict.main([str(mnist_run), *map(str, pictures), "--json", "--top", "20"]) == 0
    results = json.loads(capsys.readouterr().out)
    probs = expected_probabilities(mnist_run, pictures)
    assert [r["image"] for r in results] == [str(p) for p in pictures]
    for result, p in zip(results, probs, strict=True):
        classes = result["classes"]
        assert len(classes) == 10  # --top is capped at the number of classes
        assert [c["index"] for c in classes] == list(np.argsort(-p, kind="stable"))
        assert [c["class"] for c in classes] == [str(c["index"]) for c in classes]
        got = [c["probability"] for c in classes]
        np.testing.assert_allclose(got, np.sort(p)[::-1], rtol=1e-5, atol=1e-7)


def test_figure_is_a_png(mnist_run, pictures, tmp_path):
    figure = tmp_path / "out" / "sheet.png"
    assert predict.main([str(mnist_run), *map(str, pictures), "--figure", str(figure)]) == 0
    assert figure.read_bytes().startswith(PNG)


@pytest.mark.parametrize("where", ["a folder", "under a regular file"])
def test_a_figure_path_that_cannot_be_written_is_one_line_before_any_answer(
    mnist_run, pictures, tmp_path, capsys, where
):
    (tmp_path / "file").write_text("x")
    figure = tmp_path if where == "a folder" else tmp_path / "file" / "sheet.png"
    assert predict.main([str(mnist_run), *map(str, pictures), "--figure", str(figure)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any answer
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: --figure {figure}: ")


def test_a_cifar_run_takes_colour_pictures_and_names_its_classes(tmp_path, capsys):
    folder = write_run(tmp_path / "run", "cifar10_modified")
    rng = np.random.default_rng(0)
    path = save(tmp_path / "photo.jpg", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert predict.main([str(folder), str(path), "--json", "--top", "1"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    (top,) = result["classes"]
    p = expected_probabilities(folder, [path])[0]
    assert top["class"] == CIFAR_CLASSES[int(np.argmax(p))]
    assert top["probability"] == pytest.approx(float(p.max()), rel=1e-5)


def test_a_bad_image_is_one_line_and_the_others_are_answered(mnist_run, pictures, capsys):
    bad = pictures[0].with_name("notes.png")
    bad.write_text("not a picture")
    missing = pictures[0].with_name("missing.png")
    argv = [str(mnist_run), str(pictures[0]), str(bad), str(missing), str(pictures[1])]
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in out] == [str(pictures[0]), str(pictures[1])]
    err = captured.err.strip().splitlines()
    assert err == [
        f"error: {bad}: not an image (Pillow cannot identify its format)",
        f"error: {missing}: no such file",
    ]
    assert predict.main([*argv, "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert ["error" in r for r in results] == [False, True, True, False]


def _no_params(folder: Path) -> None:
    (folder / "params.npz").unlink()


BAD_VALUES = [
    ({"input": {"scale": float("inf"), "mean": [0.1]}}, "input scale must be a finite number"),
    ({"input": {"scale": "1", "mean": [0.1]}}, "input scale must be a finite number > 0"),
    ({"input": {"scale": 1 / 255, "mean": [float("nan")]}}, "input mean must be a list of 1 fin"),
    ({"input": {"scale": 1 / 255, "mean": ["0.1"]}}, "input mean must be a list of 1 finite"),
    ({"input": {"scale": 1, "mean": [0.1]}}, "input scale must equal fit.pixel_scale"),
    ({"fit": {"flip_test": "false"}}, "flip-test must be true or false, got 'false'"),
    ({"fit": {"iterations": None}}, "the settings in fit are damaged"),
    ({"fit": []}, "fit must be a JSON object"),
    ({"class_names": [str(d) for d in range(9)] + [9]}, "class_names must list"),
    ({"architecture": None}, "architecture"),
    ({"image_folder": "pics"}, "image_folder must be a JSON object, got 'pics'"),
    ({"image_folder": {"path": "pics"}}, "image_folder.size must be an integer, got None"),
]
"""config.json values a run folder could hold (edited by hand, written by another version) and
the one line that refuses each, naming the key: never an answer computed from them."""


def _truncated_params(folder: Path) -> None:
    path = folder / "params.npz"
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: None, "no such run folder"),
        (lambda f: f.mkdir(), "no config.json"),
        (lambda f: write_run(f) and (f / "config.json").write_text("{"), "not readable JSON"),
        (lambda f: write_run(f, architecture="lenet"), "unknown architecture 'lenet'"),
        (lambda f: write_run(f, input=None), "records no input scale and mean"),
        (
            lambda f: write_run(f, input={"scale": 1 / 255, "mean": [1, 2]}),
            "config.json: input mean must be a list of 1 finite number(s) (one per channel",
        ),
        (lambda f: write_run(f, class_names=["a"]), "class_names must list the network's"),
        (lambda f: write_run(f, class_names="ab"), "class_names must list the network's"),
        (  # two names make a two-class network, which the ten-class params do not fit
            lambda f: write_run(f, class_names=["a", "b"]),
            "does not fit the 'mnist' network that config.json names",
        ),
        (lambda f: write_run(f) and _no_params(f), "no params.npz"),
        (
            lambda f: write_run(f, params=random_params("cifar10_baseline")),
            "does not fit the 'mnist' network that config.json names",
        ),
        (lambda f: write_run(f) and _truncated_params(f), "truncated or corrupt"),
    ]
    + [(lambda f, c=change: write_run(f, **c), message) for change, message in BAD_VALUES],
)
def test_a_bad_run_folder_is_one_line_and_status_2(tmp_path, pictures, capsys, change, message):
    folder = tmp_path / "run"
    change(folder)
    assert predict.main([str(folder), str(pictures[0])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line, line


def test_as_a_process_errors_are_status_2_without_traceback(mnist_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    result = run_command("experiments.predict", str(mnist_run), str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: not an image (Pillow cannot identify its format)"
    ]
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    result = run_command("experiments.predict", str(mnist_run), str(loop))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {loop}: cannot be read (Too many levels of symbolic links)"
    ]
    result = run_command("experiments.predict", str(mnist_run), str(bad), "--top", "0")
    assert result.returncode == 2 and "--top: must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("change", "message"), BAD_VALUES[:5])
def test_bad_config_values_are_refused_by_the_processes(tmp_path, pictures, change, message):
    """As a user runs them: predict and explain end in one line and status 2, no traceback."""
    folder = write_run(tmp_path / "run", **change)
    for command, extra in (("experiments.predict", ()), ("experiments.explain", ("--out",))):
        args = [str(folder), str(pictures[0])]
        if extra:
            args += [*extra, str(tmp_path / "e.png")]
        result = run_command(command, *args)
        assert result.returncode == 2, (command, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line, line
        assert result.stdout == ""


def test_a_run_the_command_trained_is_read_as_it_was_trained(idx_dir, tmp_path):
    out = tmp_path / "trained"
    assert mnist.run(["--idx-dir", str(idx_dir), "--out", str(out), *SMALL]) == 0
    run = trained_run.load_run(out)
    from jaxnet import datasets

    test = datasets.load_idx_dir(idx_dir)
    probs = trained_run.probabilities(run, test.test_images)
    accuracy = float(np.mean(probs.argmax(axis=1) == test.test_labels))
    metrics = json.loads((out / "metrics.json").read_text())
    assert accuracy == metrics["test_accuracy"]  # the same preparation as the run's evaluation
    assert run.class_names == tuple(metrics["class_names"])


# ---------------------------------------------------------------------------------------------
# Real MNIST test digits written as files: at their own size, inverted, enlarged, in RGB


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> trained_run.TrainedRun:
    """The MNIST network after 400 steps of batch 64 (about 97% on the test set)."""
    if not REAL:
        if os.environ.get("CI"):
            pytest.fail("JAXNET_DATA is not set in CI: the real-data test cannot run")
        pytest.skip("JAXNET_DATA is not set")
    out = tmp_path_factory.mktemp("mnist") / "run"
    argv = ["--data-dir", REAL, "--out", str(out), "--iterations", "400", "--batch-size", "64"]
    argv += ["--val-size", "0", "--eval-every", "400", "--checkpoint-every", "400", "--no-progress"]
    assert mnist.run(argv) == 0
    return trained_run.load_run(out)


VARIANTS = {
    "own size": lambda a: a,
    "inverted": lambda a: 255 - a,
    "enlarged 3x": lambda a: np.asarray(
        Image.fromarray(a).resize((84, 84), Image.Resampling.BICUBIC)
    ),
    "RGB": lambda a: np.repeat(a[..., None], 3, axis=2),
}


@pytest.mark.slow
def test_real_digits_as_files_agree_with_evaluate(trained, tmp_path, capsys):
    from jaxnet import datasets

    test = datasets.load_mnist(REAL)
    x, y = test.test_images[:500], test.test_labels[:500]
    reference = jaxnet.evaluate(
        trained.arch, trained.params, x, y, batch_size=500, mean=trained.mean, scale=trained.scale
    )
    assert reference.accuracy >= 0.95  # "within a point" means something
    for name, make in VARIANTS.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        paths = [str(save(folder / f"{i}.png", make(a[..., 0]))) for i, a in enumerate(x)]
        assert predict.main([str(trained.folder), *paths, "--json", "--top", "1"]) == 0
        answers = np.array([r["classes"][0]["index"] for r in json.loads(capsys.readouterr().out)])
        agreement, accuracy = np.mean(answers == reference.predictions), np.mean(answers == y)
        if name in ("own size", "inverted", "RGB"):  # the very same 28x28 digits come back
            assert agreement == 1.0, (name, agreement)
        assert abs(accuracy - reference.accuracy) <= 0.01, (name, accuracy, reference.accuracy)


def test_a_run_evaluated_with_flips_predicts_with_flips(tmp_path):
    rng = np.random.default_rng(3)
    pics = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    plain = trained_run.load_run(write_run(tmp_path / "plain", "cifar10_modified"))
    flipped = trained_run.load_run(
        write_run(tmp_path / "flip", "cifar10_modified", fit={"flip_test": True})
    )
    assert not plain.flip and flipped.flip
    x = trained_run.network_input(plain, pics)
    arch = plain.arch
    mean_logits = (
        jaxnet.forward(arch, plain.params, x) + jaxnet.forward(arch, plain.params, x[:, :, ::-1])
    ) / 2
    np.testing.assert_allclose(
        trained_run.probabilities(flipped, pics), jax.nn.softmax(mean_logits), rtol=1e-5, atol=1e-7
    )
    assert not np.allclose(
        trained_run.probabilities(plain, pics), trained_run.probabilities(flipped, pics)
    )
