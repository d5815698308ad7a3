"""Typing: mypy passes on the package (with the native module's .pyi) and on
the README's examples, read as one program in the order they appear."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy")


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_package_passes_mypy():
    r = mypy("pyqueue")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_readme_examples_pass_mypy(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 5
    examples = tmp_path / "readme_examples.py"
    examples.write_text("\n".join(blocks))
    r = mypy(str(examples))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_wheel_ships_the_types():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert re.search(r'pyqueue = \[.*"py\.typed".*"\*\.pyi"', f.read())
    assert os.path.exists(os.path.join(ROOT, "pyqueue", "py.typed"))
    assert os.path.exists(os.path.join(ROOT, "pyqueue", "_native.pyi"))
