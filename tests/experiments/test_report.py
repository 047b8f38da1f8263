import json

from experiments import mnist, report, run_folder

SMALL = ["--iterations", "30", "--batch-size", "16", "--val-size", "50", "--no-progress"]


def test_report_gathers_runs(idx_dir, tmp_path):
    runs = tmp_path / "runs"
    assert mnist.run(["--idx-dir", str(idx_dir), "--out", str(runs / "mnist"), *SMALL]) == 0
    (runs / "unfinished").mkdir()  # a folder without metrics.json is not a run
    assert report.main(["--runs", str(runs)]) == 0
    text = (runs / "report.md").read_text()
    accuracy = json.loads((runs / "mnist" / "metrics.json").read_text())["test_accuracy"]
    assert f"**{100 * accuracy:.2f}%**" in text
    assert "97.20%" in text  # the seed's figure beside ours
    for name in run_folder.FIGURES:  # every figure the run wrote, gradients.png included
        assert f"](mnist/{name})" in text
    assert "5*5*1*16 + 16 = 416" in text
    assert "unfinished" not in text


def test_report_without_runs_fails_clearly(tmp_path, capsys):
    assert report.main(["--runs", str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err
