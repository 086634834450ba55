"""`make lint` guards every build: CI runs it before the tests, and the project's ruff and
mypy settings catch what they are meant to (mypy strict only for the pure core)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def test_ci_lints_before_it_tests() -> None:
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip().startswith("make ")]
    assert steps == ["make lint", "make test"], steps


def _ruff(source: str, filename: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", str(PYPROJECT), "--no-cache", "--stdin-filename",
         filename, "-"],
        input=source, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


def test_ruff_flags_an_unused_import_and_passes_clean_code() -> None:
    bad = _ruff("import os\n", "aosk/example.py")
    assert bad.returncode == 1 and "F401" in bad.stdout, bad.stdout + bad.stderr
    good = _ruff('"""An example."""\n\nVALUE = 1\n', "aosk/example.py")
    assert good.returncode == 0, good.stdout + good.stderr


def _mypy(tree: Path, module: str) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api")
    out, err, code = api.run(["--config-file", str(PYPROJECT), "--no-incremental", "--cache-dir", str(tree / ".c"),
                              "--no-error-summary", str(tree / (module.replace(".", "/") + ".py"))])
    return out + err, code


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for pkg in ("aosk", "aosk/kernel", "aosk/client"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    untyped = "def double(x):\n    return x * 2\n"
    (tmp_path / "aosk/kernel/example.py").write_text(untyped)
    (tmp_path / "aosk/client/example.py").write_text(untyped)
    (tmp_path / "aosk/client/wrong.py").write_text('count: int = "three"\n')
    return tmp_path


def test_mypy_is_strict_for_the_kernel_only(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    out, code = _mypy(tree, "aosk.kernel.example")
    assert code == 1 and "no-untyped-def" in out, out
    out, code = _mypy(tree, "aosk.client.example")
    assert code == 0, out
    out, code = _mypy(tree, "aosk.client.wrong")
    assert code == 1 and "assignment" in out, out
