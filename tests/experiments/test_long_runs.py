"""Long runs that survive: SIGKILL and resume, Ctrl-C, NaN guard, reproducibility.

These run the real command in subprocesses on a small data set in MNIST's idx format.
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from run_helpers import ROOT, command, env, run

pytestmark = pytest.mark.slow

FLAGS = (
    "--iterations",
    "120",
    "--batch-size",
    "16",
    "--val-size",
    "40",
    "--log-every",
    "10",
    "--eval-every",
    "40",
    "--checkpoint-every",
    "10",
    "--no-progress",
)


def params_of(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "params.npz") as f:
        return {k: f[k] for k in f.files}


def assert_bit_identical(a: Path, b: Path) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def history_without_time(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "history.csv").open()))
    for r in rows:
        r.pop("elapsed_s")
    return rows


def assert_resumes_to(reference: Path, data_dir: Path, out: Path) -> None:
    """``--resume`` on ``out`` ends bit-identical to ``reference``, its history too."""
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)
    assert history_without_time(out) == history_without_time(reference)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from run_helpers import make_idx_dir

    return make_idx_dir(tmp_path_factory.mktemp("idx"), n_train=300, n_test=60)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted run, seed 0."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = mnist(data_dir, out, *FLAGS)
    assert result.returncode == 0, result.stderr
    return out


def mnist(data_dir: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m experiments.mnist`` on the small idx set, writing to ``out``."""
    return run("experiments.mnist", "--idx-dir", str(data_dir), "--out", str(out), *flags)


def resume(data_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """``python -m experiments.mnist --resume`` on the run in ``out``."""
    return mnist(data_dir, out, "--resume", "--no-progress")


def start(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = command(
        "experiments.mnist", "--idx-dir", str(data_dir), "--out", str(out), *FLAGS, *extra
    )
    return subprocess.Popen(
        args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoints(out: Path, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if len(list((out / "checkpoints").glob("ckpt_*.npz"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its checkpoints: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def killed_mid_run(data_dir: Path, out: Path) -> None:
    """The reference command in ``out``, SIGKILLed once it has saved two checkpoints."""
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "params.npz").exists()  # it really died mid-run


def test_sigkill_then_resume_is_bit_identical(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    killed_mid_run(data_dir, out)
    assert_resumes_to(reference, data_dir, out)


def test_sigkill_before_any_checkpoint_then_resume(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)


def test_same_seed_same_run_other_seed_differs(data_dir, reference, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    for out, seed in ((again, "0"), (other, "1")):
        result = mnist(
            data_dir,
            out,
            "--seed",
            seed,
            *FLAGS,
        )
        assert result.returncode == 0, result.stderr
    assert history_without_time(again) == history_without_time(reference)
    assert_bit_identical(again, reference)

    def metrics(out):
        m = json.loads((out / "metrics.json").read_text())
        for timing in ("train_time_s", "images_per_second", "peak_rss_mb"):
            m.pop(timing)
        return m

    assert metrics(again) == metrics(reference)
    assert history_without_time(other) != history_without_time(reference)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    result = mnist(
        data_dir,
        out,
        "--iterations",
        "50",
        "--batch-size",
        "16",
        "--val-size",
        "40",
        "--checkpoint-every",
        "1",
        "--learning-rate",
        "1e4",
        "--no-progress",
    )
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert "NaN or infinite at iteration" in err[-1] and "lower the learning rate" in err[-1]
    assert "Traceback" not in result.stderr
    kept = sorted((out / "checkpoints").glob("ckpt_*.npz"))
    assert kept, "the last good checkpoint must be kept"
    digest = hashlib.sha256(kept[-1].read_bytes()).hexdigest()
    from experiments.run_folder import RunFolder

    newest, _ = RunFolder(out).checkpoints().checkpoints()[-1]  # what --resume starts from
    bad = int(err[-1].split("iteration ")[1].split(":")[0])
    assert newest < bad
    assert hashlib.sha256(kept[-1].read_bytes()).hexdigest() == digest
    assert not (out / "params.npz").exists()


def test_two_devices_follow_one(data_dir, tmp_path):
    """--devices 2 (virtual CPU devices) trains like one device, up to float32 rounding."""
    runs = {}
    for devices in ("1", "2"):
        out = tmp_path / f"d{devices}"
        result = mnist(
            data_dir,
            out,
            "--devices",
            devices,
            "--iterations",
            "40",
            "--batch-size",
            "16",
            "--val-size",
            "40",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
        runs[devices] = params_of(out)
    for key, value in runs["1"].items():
        np.testing.assert_allclose(runs["2"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_batch_that_does_not_divide_is_refused(data_dir, tmp_path):
    result = mnist(
        data_dir,
        tmp_path / "r",
        "--devices",
        "2",
        "--batch-size",
        "15",
        "--val-size",
        "40",
        "--no-progress",
    )
    assert result.returncode == 2
    assert "batch size 15 does not divide over 2 devices" in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_stop_signal_saves_says_how_to_resume_and_resumes(data_dir, reference, tmp_path, stop):
    """Ctrl-C, or SIGTERM as SLURM, Kubernetes or a preemptible VM sends before the kill."""
    out = tmp_path / "run"
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 2)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + stop, err
    assert f"interrupted by {stop.name}" in err and f"--out {out} --resume" in err
    assert "Traceback" not in err
    assert (out / "history.csv").exists() and not (out / "params.npz").exists()
    assert_resumes_to(reference, data_dir, out)


def test_a_second_signal_during_the_save_corrupts_nothing(data_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 2)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # at once: during the step or the save
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not list(out.rglob(".*.tmp")), "no half-written file is left"
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)


def test_a_folder_in_use_is_refused_before_any_work(data_dir, tmp_path):
    """Two trainings on one folder: the second (a new run, --resume or --overwrite) is refused,
    naming the folder and the process that holds it; the first's files stay its own."""
    out = tmp_path / "run"
    first = start(data_dir, out, "--iterations", "100000", "--checkpoint-every", "20")
    wait_for_checkpoints(out, first, 1)
    config = (out / "config.json").read_bytes()
    for extra in (("--seed", "5"), ("--resume",), ("--overwrite", "--seed", "5")):
        second = mnist(data_dir, out, *FLAGS, *extra)
        assert second.returncode == 2, second.stderr
        assert f"{out} is in use by process {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
    assert first.poll() is None, "the first run must still be running for this test to hold"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert (out / "config.json").read_bytes() == config
    assert json.loads(config)["fit"]["iterations"] == 100000
    # The lock went with the process: the folder is free again.
    result = mnist(data_dir, out, "--resume", "--iterations", "120", "--no-progress")
    assert result.returncode == 2
    assert "not past the run's newest checkpoint" in result.stderr


def test_a_run_killed_by_sigkill_leaves_no_stale_lock(data_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(data_dir, out)
    wait_for_checkpoints(out, proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".lock").exists()
    result = resume(data_dir, out)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_a_run_folder_that_cannot_be_written_is_one_line_before_any_work(data_dir, tmp_path, where):
    if where == "proc":
        out = Path("/proc/jaxnet-run")
    else:
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "run"
    result = mnist(data_dir, out, *FLAGS)
    assert result.returncode == 2
    assert f"--out {out}: cannot write there" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_new_run_leaves_no_folder_behind(data_dir, tmp_path):
    out = tmp_path / "new"
    result = mnist(data_dir, out, *FLAGS, "--val-size", "100000")
    assert result.returncode == 2
    assert not out.exists()


def _small_tmpfs(mount: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``mount`` where this process may (root, Linux)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_is_one_line_and_the_run_resumes(data_dir, reference, tmp_path):
    """A run folder on a small tmpfs: the checkpoint that does not fit ends the run with one
    line naming the file; the checkpoints before it stay, and --resume continues."""
    mount = tmp_path / "small"
    if not _small_tmpfs(mount, "400k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        out = mount / "run"
        result = mnist(data_dir, out, *FLAGS)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-2]
        assert f"error: cannot write {out}/" in line and "No space left on device" in line
        assert f"--out {out} --resume" in result.stderr
        kept = sorted((out / "checkpoints").glob("ckpt_*.npz"))
        assert kept
        # Make room the way a user would: move the run where there is space, and resume.
        moved = tmp_path / "moved"
        subprocess.run(["cp", "-a", str(out), str(moved)], check=True)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    (moved / ".lock").unlink()
    result = resume(data_dir, moved)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(moved, reference)


def test_resume_applies_the_settings_that_may_change_and_records_them(data_dir, tmp_path):
    out = tmp_path / "run"
    flags = [f for f in FLAGS]
    flags[flags.index("--iterations") + 1] = "60"
    assert mnist(data_dir, out, *flags, "--schedule", "constant").returncode == 0
    result = mnist(
        data_dir, out, "--resume", "--iterations", "120", "--learning-rate", "0.05",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resuming from iteration 60 with iterations 60 -> 120, learning-rate" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["fit"]["iterations"] == 120 and config["fit"]["learning_rate"] == 0.05
    assert config["resumed"] == [
        {"from_iteration": 60, "changed": {"iterations": 120, "learning_rate": 0.05}}
    ]
    rows = history_without_time(out)
    assert int(rows[-1]["iteration"]) == 120
    assert float(rows[-1]["learning_rate"]) == 0.05


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--batch-size", "32"), "--resume cannot change --batch-size (the run has 16, given 32)"),
        (("--seed", "4"), "--resume cannot change --seed (the run has 0, given 4)"),
        (("--no-augment",), "--resume cannot change --augment (the run has True, given False)"),
        (("--val-size", "50"), "--resume cannot change --val-size (the run has 40, given 50)"),
        (("--iterations", "100"), "--iterations 100 is not past the run's newest checkpoint"),
    ],
)
def test_resume_refuses_what_it_cannot_change(data_dir, reference, tmp_path, flags, message):
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    before = (out / "config.json").read_bytes()
    result = mnist(data_dir, out, "--resume", "--no-progress", *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "config.json").read_bytes() == before


def test_resume_with_the_same_settings_repeated_is_accepted(data_dir, reference, tmp_path):
    """A job script that repeats its whole command with --resume: nothing changes."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    result = mnist(data_dir, out, *FLAGS, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming with the settings saved in" in result.stderr
    assert_bit_identical(out, reference)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: "{not json", "not readable JSON"),
        (lambda c: json.dumps({k: v for k, v in json.loads(c).items() if k != "val_size"}),
         "val_size must be an integer >= 0, got None"),
        (lambda c: json.dumps({**json.loads(c), "fit": {"batch_size": "x"}}), "are damaged"),
    ],
)  # fmt: skip
def test_resume_from_a_damaged_config_is_one_line(data_dir, reference, tmp_path, damage, message):
    out = tmp_path / "run"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    config = out / "config.json"
    config.write_text(damage(config.read_text()))
    result = mnist(data_dir, out, "--resume", "--no-progress")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_same_seed_gives_the_same_bits_under_contention(data_dir, reference, tmp_path):
    """More busy processes than cores, and another training beside it: every array equal.

    oneDNN fixes a primitive's work split (and so the order of backward weights' sums) from
    the OpenMP thread count of the thread that makes it; which thread does that depends on
    XLA's scheduling, so under load it used to change the last bits (issue 26).
    """
    import os

    busy = [
        subprocess.Popen(["python3", "-c", "while True: pass"])
        for _ in range((os.cpu_count() or 1) + 1)
    ]
    try:
        beside = start(data_dir, tmp_path / "beside")
        out = tmp_path / "run"
        result = mnist(data_dir, out, *FLAGS)
        beside.communicate(timeout=600)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)
    assert_bit_identical(tmp_path / "beside", reference)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(data_dir: Path, out: Path, *flags: str) -> list[subprocess.CompletedProcess]:
    """The MNIST command as two processes over 127.0.0.1, one CPU device each."""
    port = str(_free_port())
    join = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    args = ["experiments.mnist", "--idx-dir", str(data_dir), "--out", str(out), *flags, *join]
    procs = [
        subprocess.Popen(
            command(*args, str(i)),
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


SHORT = (
    "--iterations", "60", "--batch-size", "16", "--val-size", "40", "--log-every", "10",
    "--eval-every", "20", "--checkpoint-every", "20", "--no-progress",
)  # fmt: skip


def test_two_processes_train_as_one_process_on_two_devices(data_dir, tmp_path):
    """--coordinator: the mesh spans both processes; process 0 alone writes the run folder."""
    out, alone = tmp_path / "two", tmp_path / "alone"
    first, second = _two_processes(data_dir, out, *SHORT)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "test accuracy" in first.stdout and "test accuracy" not in second.stdout
    assert mnist(data_dir, alone, *SHORT, "--devices", "2").returncode == 0
    two, one = params_of(out), params_of(alone)
    for key, value in one.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in alone.iterdir())
    # --resume across the processes: extend the run by 20 iterations.
    first, second = _two_processes(data_dir, out, "--resume", "--iterations", "80", "--no-progress")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads((out / "config.json").read_text())["fit"]["iterations"] == 80


def test_joining_a_multi_process_run_is_checked_before_any_work(data_dir, tmp_path):
    for flags, message in (
        (("--num-processes", "2"), "--num-processes and --process-id need --coordinator"),
        (("--distributed", "--coordinator", "127.0.0.1:1"), "--distributed finds the processes"),
        (("--coordinator", "127.0.0.1:99999", "--num-processes", "2", "--process-id", "0"),
         "port in [1, 65535]"),
        (("--coordinator", "127.0.0.1:5", "--num-processes", "2", "--process-id", "2"),
         "process_id must be in [0, 2)"),
    ):  # fmt: skip
        result = mnist(data_dir, tmp_path / "r", *SHORT, *flags)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "r").exists()


def test_resume_reads_the_idx_folder_the_run_started_on(data_dir, reference, tmp_path):
    """config.json records --idx-dir, so --resume without it goes on with the same images."""
    out = tmp_path / "run"
    killed_mid_run(data_dir, out)
    assert json.loads((out / "config.json").read_text())["idx_dir"] == str(data_dir)
    result = run("experiments.mnist", "--out", str(out), "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert_bit_identical(out, reference)
