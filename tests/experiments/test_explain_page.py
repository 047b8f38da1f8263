"""experiments.explain_page: every layer, the table's numbers, and nothing from a network.

(The page in a real browser: tests/browser/test_explain_browser.py.)
"""

from __future__ import annotations

import base64
import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from data_files import real_data_root
from run_folders import image_for, write_run

from experiments import explain, explain_page, trained_run, walk
from jaxnet import architectures

MB = 1024 * 1024


def data_of(page: str) -> dict:
    """The JSON the page carries (in its ``<script id="data">`` element)."""
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    assert match, "no data element"
    return json.loads(match.group(1))


def floats(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), "<f4").reshape(entry["shape"])


@pytest.fixture(scope="module", params=["mnist", "cifar10_modified"])
def built(request, tmp_path_factory):
    """A run with random parameters, its explanation, table and page."""
    folder = write_run(tmp_path_factory.mktemp(request.param) / "run", request.param)
    run = trained_run.load_run(folder)
    expl = walk.explain(run, image_for(run.arch), label=3)
    rows = walk.table(expl)
    page = explain_page.render_page(
        expl, "a title", rows, explain.format_table(expl, "a title", rows)
    )
    return run, expl, rows, page


def test_the_page_is_self_contained(built):
    *_, page = built
    assert page.startswith("<!DOCTYPE html>")
    assert explain_page.DATA_MARK not in page
    # nothing is fetched: no src= or href= naming a network (or protocol-relative) address,
    # no external stylesheet or script, no @import or url() in the CSS
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link[^>]*stylesheet", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert page.count("<script") == 2  # the data and the program


def test_every_layer_every_array_and_the_rules(built):
    run, expl, _, page = built
    data = data_of(page)
    arch, a = run.arch, expl.analytic
    assert [layer["name"] for layer in data["layers"]] == [layer.name for layer in arch.layers]
    for i, (layer, entry) in enumerate(zip(arch.layers, data["layers"], strict=True)):
        assert entry["shape"] == list(arch.output_shapes[i])
        assert "<math" in entry["rule"]
        want = np.asarray(a.outputs[i][0], np.float32)
        np.testing.assert_array_equal(floats(data["arrays"][f"y{i}"]), want)
        want = np.asarray(a.dy[i][0], np.float32)
        np.testing.assert_array_equal(floats(data["arrays"][f"dy{i}"]), want)
        assert entry["dx"] in data["arrays"]
        if layer.name in a.dparams:
            assert entry["params"]
            w = np.asarray(a.dparams[layer.name]["w"], np.float32)
            np.testing.assert_array_equal(floats(data["arrays"][f"dW:{layer.name}"]), w)
            assert data["arrays"][f"db:{layer.name}"]["shape"] == [layer.param_shapes()["b"][0]]
    assert data["label"] == 3 and data["classes"] == list(run.class_names)
    saliency = np.abs(a.dinput[0]).max(axis=-1).astype(np.float32)
    np.testing.assert_array_equal(floats(data["saliency"]), saliency)
    assert np.asarray(data["probabilities"]) == pytest.approx(expl.probabilities)


def test_the_numbers_are_the_printed_table(built):
    _, expl, rows, page = built
    data = data_of(page)
    printed = explain.format_table(expl, "a title")
    assert data["table"] == printed
    diffs = walk.differences(expl)
    for i, entry in enumerate(data["layers"]):
        assert (entry["absolute"], entry["relative"]) == diffs[i]
        row = entry["backward"]
        assert (row["absolute"], row["relative"]) == (f"{diffs[i][0]:.1e}", f"{diffs[i][1]:.1e}")
        assert row["name"] == entry["name"]
        line = next(
            x for x in printed.splitlines() if x.split()[:2] == [row["name"], row["receives"]]
        )
        assert line.split()[-2:] == [row["absolute"], row["relative"]]
        assert line.split()[-3] == row["dx_max"] and line.split()[2] == row["dy_max"]
        assert entry["forward"] == rows.forward[i + 1]._asdict()
    loss = data["lossRow"]
    assert (loss["absolute_value"], loss["relative_value"]) == diffs[-1]
    assert loss["absolute"] == f"{diffs[-1][0]:.1e}"
    assert data["answer"] in printed


def test_the_cifar10_table3_page_weighs_at_most_5_mb(tmp_path):
    folder = write_run(tmp_path / "run", "cifar10_modified")
    run = trained_run.load_run(folder)
    expl = walk.explain(run, image_for(run.arch), label=0)
    rows = walk.table(expl)
    text = explain.format_table(expl, "title", rows)
    path = explain_page.write_page(expl, "title", tmp_path / "page.html", rows=rows, text=text)
    assert path.stat().st_size <= 5 * MB
    assert architectures.get("cifar10_modified").name == run.arch.name


def test_markup_in_names_cannot_end_the_data_early(tmp_path):
    names = ["</script><b>x</b>", *(str(d) for d in range(1, 10))]
    folder = write_run(tmp_path / "run", "mnist", class_names=names)
    run = trained_run.load_run(folder)
    expl = walk.explain(run, image_for(run.arch), 0)
    rows = walk.table(expl)
    page = explain_page.render_page(expl, "</script>", rows, explain.format_table(expl, "", rows))
    assert page.count("</script>") == 2
    data = data_of(page)
    assert data["classes"][0] == names[0] and data["title"] == "</script>"


def test_the_template_is_package_data():
    assert resources.files("experiments").joinpath(explain_page.TEMPLATE).is_file()
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'experiments = ["{explain_page.TEMPLATE}"]' in pyproject


def test_a_layer_kind_without_a_rule_is_refused():
    class Odd:
        kind = "odd"

    with pytest.raises(ValueError, match="odd"):
        explain_page.rule_html(Odd())


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture
def cifar_run(tmp_path) -> Path:
    return write_run(tmp_path / "run", "cifar10_modified")


def photo(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(path)
    return path


def test_command_writes_the_page_beside_the_figure(tmp_path, cifar_run, capsys):
    argv = [str(cifar_run), str(photo(tmp_path)), "--class", "cat", "--html"]
    assert explain.main(argv) == 0
    out = capsys.readouterr().out
    page = cifar_run / "explain-photo.html"
    assert out.strip().splitlines()[-2:] == [
        f"figure: {cifar_run / 'explain-photo.png'}",
        f"page: {page}",
    ]
    data = data_of(page.read_text())
    assert data["table"] + "\n" in out  # the page's table is the one printed
    assert data["classes"][data["label"]] == "cat"


def test_command_html_path_and_out(tmp_path, cifar_run, capsys):
    fig = tmp_path / "figs" / "cat.png"
    argv = [str(cifar_run), str(photo(tmp_path)), "--out", str(fig), "--html"]
    assert explain.main(argv) == 0
    assert (tmp_path / "figs" / "cat.html").is_file()
    page = tmp_path / "pages" / "new" / "p.html"  # folders are made
    assert explain.main([str(cifar_run), str(photo(tmp_path)), "--html", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def bad_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    return {
        "a folder": (tmp_path / "folder", "is a folder"),
        "under a regular file": (tmp_path / "file" / "p.html", "is not a folder"),
        "deeper under a regular file": (tmp_path / "file" / "a" / "p.html", "is not a folder"),
    }


@pytest.mark.parametrize(
    "case", ["a folder", "under a regular file", "deeper under a regular file"]
)
def test_an_html_path_that_cannot_be_written_is_one_line_before_any_work(
    tmp_path, cifar_run, capsys, monkeypatch, case
):
    path, message = bad_paths(tmp_path)[case]
    monkeypatch.setattr(explain, "explain", lambda *a, **k: pytest.fail("the work was done"))
    argv = [str(cifar_run), str(photo(tmp_path)), "--html", str(path)]
    assert explain.main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: --html {path}: ") and message in line
    assert captured.out == ""


@pytest.mark.parametrize("case", ["a folder", "under a regular file"])
def test_a_figure_path_that_cannot_be_written_is_one_line_before_any_work(
    tmp_path, cifar_run, capsys, monkeypatch, case
):
    path, message = bad_paths(tmp_path)[case]
    path = path.with_suffix(".png") if case != "a folder" else path
    monkeypatch.setattr(explain, "explain", lambda *a, **k: pytest.fail("the work was done"))
    assert explain.main([str(cifar_run), str(photo(tmp_path)), "--out", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --out {path}: ") and message in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_one_line(tmp_path, cifar_run, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = [str(cifar_run), str(photo(tmp_path)), "--html", str(locked / "p.html")]
        assert explain.main(argv) == 2
    finally:
        locked.chmod(0o755)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "Permission denied" in line and str(locked) in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nowhere", "--index", "0"], "no such run folder"),
        (["{run}", "{tmp}/not-an-image.png"], "not-an-image.png"),
        (["{run}", "{photo}", "--class", "10"], "not one of the classes"),
    ],
)
def test_bad_input_with_html_is_one_line_and_status_2(tmp_path, cifar_run, capsys, argv, message):
    (tmp_path / "not-an-image.png").write_text("not a picture")
    fields = {"run": cifar_run, "tmp": tmp_path, "photo": photo(tmp_path)}
    argv = [a.format(**fields) for a in argv] + ["--html", str(tmp_path / "p.html")]
    assert explain.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "p.html").exists()


def test_a_write_that_fails_late_is_one_line_and_status_1(tmp_path, cifar_run, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(explain_page, "write_page", full_disk)
    argv = [str(cifar_run), str(photo(tmp_path)), "--html", str(tmp_path / "p.html")]
    assert explain.main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: --html {tmp_path / 'p.html'}: No space left on device"


def test_a_real_mnist_test_digit(tmp_path, capsys):
    """As the book makes its page: a real MNIST test digit, through the command."""
    data = real_data_root()
    folder = write_run(tmp_path / "run", "mnist")
    page = tmp_path / "digit.html"
    argv = [str(folder), "--index", "0", "--data-dir", str(data), "--html", str(page)]
    assert explain.main(argv) == 0
    out = capsys.readouterr().out
    content = data_of(page.read_text())
    assert "test image #0 (true class 7)" in content["title"]
    assert content["table"] in out
    image = base64.b64decode(content["image"]["data"])
    assert content["image"]["shape"] == [28, 28, 1] and image.count(0) > 400  # black background
    assert page.stat().st_size < 2 * MB
