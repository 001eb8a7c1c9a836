"""Each command's imports against the install line that runs it: the base dependencies plus
the extra the README names, read from pyproject.toml.

An entry point's imports are followed through the repository's own modules (lazy imports
inside functions included: they run); an import inside ``try: ... except ImportError`` is
optional (the command says what is missing and goes on), and so is one the test names below.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: The import name of each distribution the project depends on.
IMPORT_NAME = {
    "torch": "torch",
    "triton": "triton",
    "numpy": "numpy",
    "numba": "numba",
    "pysdd": "pysdd",
    "problog": "problog",
    "klaycircuits": "klay",
    "scikit-learn": "sklearn",
    "matplotlib": "matplotlib",
    "pytest": "pytest",
    "pytest-benchmark": "pytest_benchmark",
    "hypothesis": "hypothesis",
    "scipy": "scipy",
    "pillow": "PIL",
}

#: Where the package folders live, by import prefix.
PACKAGES = {"trilay.kernels": "kernels", "trilay.engine": "engine", "trilay.frontends": "frontends"}

#: (command, its entry module, the extra of its install line)
COMMANDS = [
    ("python -m benchmarks --quick", "benchmarks.__main__", "bench"),
    ("python -m benchmarks.compile_scale", "benchmarks.compile_scale", "bench"),
    (
        "python -m trilay.frontends.deepproblog.mnist_addition",
        "trilay.frontends.deepproblog.mnist_addition",
        "bench",
    ),
    ("python -m trilay.engine", "trilay.engine.__main__", None),
    (
        "python -m trilay.frontends.examples.semantic_loss_digits",
        "trilay.frontends.examples.semantic_loss_digits",
        "examples",
    ),
    ("python -m trilay.frontends.examples.fuzzy_ltn", "trilay.frontends.examples.fuzzy_ltn", None),
]


def distributions(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def module_file(module: str) -> pathlib.Path | None:
    """The repository file of a module (``None`` for a module not in the repository)."""
    for prefix, folder in PACKAGES.items():
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix) :].lstrip(".").split(".") if module != prefix else []
            base = ROOT / folder / pathlib.Path(*rest) if rest else ROOT / folder
            break
    else:
        if module.split(".")[0] != "benchmarks":
            return None
        base = ROOT / pathlib.Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def required_imports(entry: str) -> set[str]:
    """Top-level names of the third-party modules an entry module needs."""
    seen, external, todo = set(), set(), [entry]
    while todo:
        module = todo.pop()
        path = module_file(module)
        if path is None or path in seen:
            continue
        seen.add(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name, optional in _imports(ast.parse(path.read_text()), package):
            if module_file(name) is not None:
                todo.append(name)
            elif not optional and name.split(".")[0] not in sys.stdlib_module_names:
                external.add(name.split(".")[0])
    return external - {"trilay", "benchmarks"}


def _imports(tree: ast.AST, package: str):
    """``(module, optional)`` for every import, relative ones resolved against ``package``."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
        ):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in guarded
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            yield name, id(node) in guarded
            for alias in node.names:  # `from package import module`
                yield f"{name}.{alias.name}", True


@pytest.mark.parametrize(("command", "entry", "extra"), COMMANDS, ids=[c for c, _, _ in COMMANDS])
def test_each_command_runs_with_its_install_line(command, entry, extra):
    assert module_file(entry) is not None, entry
    installed = distributions(PYPROJECT["project"]["dependencies"])
    if extra is not None:
        installed |= distributions(PYPROJECT["project"]["optional-dependencies"][extra])
    provided = {IMPORT_NAME.get(d, d) for d in installed} | {"llvmlite"}  # numba's own
    missing = required_imports(entry) - provided
    assert not missing, f"`{command}` imports {sorted(missing)}, which its install line lacks"


def test_the_test_extra_covers_the_tests():
    """Every test module's third-party imports are in the base dependencies or ``[test]``,
    except the peers a test skips without (importorskip or a skip with the reason)."""
    installed = distributions(PYPROJECT["project"]["dependencies"])
    installed |= distributions(PYPROJECT["project"]["optional-dependencies"]["test"])
    provided = {IMPORT_NAME.get(d, d) for d in installed}
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        names = {n.split(".")[0] for n, optional in _imports(tree, "tests") if not optional}
        names = {n for n in names if n not in sys.stdlib_module_names and n not in local}
        names -= {"trilay", "benchmarks", "tests", "conftest"}
        assert names <= provided, f"{path.name} imports {sorted(names - provided)}"
