"""The README's code is code: every Python block runs as pasted, in a fresh process, outside
the repository (so it cannot read the repository's files by a relative path), and every shell
block's commands name entry points that exist."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)

#: Modules a block may need that the test install (`pip install -e ".[test]"`) may not have;
#: a block that fails to import one of them is skipped, naming it.
OPTIONAL = {"deeplog", "deepproblog", "sklearn", "matplotlib"}


def blocks(language: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced block in that language."""
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


PYTHON = blocks("python")


def test_the_readme_has_python_blocks():
    assert len(PYTHON) >= 5


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line{line}" for line, _ in PYTHON])
def test_python_block_runs_as_pasted(line, code, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode:
        missing = re.search(r"No module named '([\w.]+)'", result.stderr)
        if missing and missing.group(1).split(".")[0] in OPTIONAL:
            pytest.skip(f"README line {line} needs {missing.group(1)}, not installed here")
    assert result.returncode == 0, f"README line {line}:\n{result.stderr[-3000:]}"


def test_shell_blocks_name_modules_that_exist():
    """Every ``python -m X`` in a shell block is an importable module of this repository."""
    modules = {
        m
        for _, code in blocks("bash")
        for m in re.findall(r"python -m ([\w.]+)", code)
        if m not in ("pip", "pytest")
    }
    assert modules
    for module in modules:
        result = subprocess.run(
            [sys.executable, "-c", f"import importlib.util as u; assert u.find_spec({module!r})"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"python -m {module}: {result.stderr[-500:]}"
