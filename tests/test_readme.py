"""README stays true: its example runs, and it gives exactly the two set-up commands."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"```bash\n(.*?)\n```", _section("Set up"), re.S)
    assert commands == [
        "pip install -e . && python -m experiments.mnist",
        'pip install -e ".[test]" && python -m pytest',
    ]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    # CI installs the test extra and the browser one (tests/browser: Selenium, headless Chromium)
    assert 'pip install --quiet --disable-pip-version-check -e ".[test,browser]"' in ci
    assert "python3 -m pytest" in ci


def test_library_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", _section("Using the library"), re.S)
    exec(compile(code, "README.md", "exec"), {})
    first, second = capsys.readouterr().out.strip().splitlines()
    loss, accuracy = map(float, first.split())
    assert loss > 0 and 0 <= accuracy <= 1
    assert float(second) < 1e-5  # analytic and autodiff gradients agree in float32
