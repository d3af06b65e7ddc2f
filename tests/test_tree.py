"""The tree stays clean and CI runs what the README says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint_passes() -> None:
    """`ruff check` finds nothing."""
    result = run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_passes() -> None:
    """`ruff format --check` finds nothing to reformat."""
    result = run(
        sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "bench", "scripts"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes() -> None:
    """mypy finds no type errors in the package."""
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    """The README starts with the two commands, and .ci/run runs the second one."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```sh\n")[1:3]]
    assert blocks[0].endswith("livedata demo")
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()


def test_runtime_does_not_import_the_gateway() -> None:
    """Importing livedata.runtime loads no module of livedata.gateway (no import circle)."""
    code = (
        "import sys, livedata.runtime\n"
        "print(sorted(m for m in sys.modules if m.startswith('livedata.gateway')))"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_gateway_modules_keep_no_registry() -> None:
    """No module of livedata.gateway keeps services in a module-level weak dict or set."""
    found = []
    for path in sorted((ROOT / "src" / "livedata" / "gateway").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                called = node.value.func if isinstance(node.value, ast.Call) else None
                name = getattr(called, "attr", getattr(called, "id", ""))
                if name in {"WeakKeyDictionary", "WeakValueDictionary", "WeakSet"}:
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []
