"""docs/read-the-code.md stays true: its files exist, hold the functions it names, fit its
limits (at most 8 files, 1,800 lines), and its stated total is the sum of its rows."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "read-the-code.md").read_text()
ROW = re.compile(r"^\| (\d+) \| `([^`]+)` \| (\d+) \| (.*) \|$", re.M)


def _rows() -> list[tuple[str, int, str]]:
    return [(path, int(lines), what) for _, path, lines, what in ROW.findall(PAGE)]


def _defined(path: Path) -> set[str]:
    """Every function, class and module-level name in ``path``, methods as ``Class.method``."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_the_route_fits_its_limits_and_states_its_total():
    rows = _rows()
    assert 1 <= len(rows) <= 8
    total = sum(lines for _, lines, _ in rows)
    assert total <= 1800
    assert f"{total:,} lines in all" in PAGE
    command = "wc -l " + " ".join(path for path, _, _ in rows)
    assert command in " ".join(PAGE.split())  # the command that counts them, in row order


def test_every_file_holds_the_functions_it_names():
    for path, _, what in _rows():
        file = ROOT / path
        names = _defined(file)
        named = re.findall(r"`([A-Za-z_][\w.]*)\(\)`", what)
        assert named, path
        for name in named:
            assert name in names, f"{path} has no {name}"


def test_each_row_states_its_files_length_today():
    for path, lines, _ in _rows():
        assert sum(1 for _ in (ROOT / path).open()) == lines, path
