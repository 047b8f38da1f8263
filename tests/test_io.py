"""The one atomic writer: whole file or nothing, the old file kept on failure."""

import json
from pathlib import Path

import pytest

from jaxnet import io


def test_write_text_and_json(tmp_path):
    dest = tmp_path / "sub" / "a.txt"
    assert io.write_text(dest, "hello\n") == dest
    assert dest.read_text() == "hello\n"
    io.write_json(tmp_path / "b.json", {"x": float("nan"), "y": [1, 2]})
    loaded = json.loads((tmp_path / "b.json").read_text())
    assert loaded["y"] == [1, 2] and loaded["x"] != loaded["x"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "c.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), io.atomic_write(dest) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be"), io.atomic_write("x", "a"):
        pass


def test_check_writable_names_the_flag_and_the_reason(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^--figure /: is a folder"):
        io.check_writable(Path("/"), "--figure")
    with pytest.raises(ValueError, match=r"file is not a folder \(Not a directory\)$"):
        io.check_writable(tmp_path / "file" / "sheet.png", "--figure")
    assert io.check_writable(tmp_path / "new" / "p.png", "--out") == tmp_path / "new" / "p.png"


def test_a_failed_write_names_the_destination_not_the_temporary_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        io.write_text(tmp_path / "file" / "out.txt", "text")
    assert info.value.filename == str(tmp_path / "file" / "out.txt")
