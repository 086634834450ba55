"""Helpers of the ops/ tests (tests/ops/): where the artefacts are, and the real tools
that check them (promtool, nginx, envsubst), which `make test` installs when missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"

# tool -> the Debian package the Makefile installs it from
PACKAGES = {"promtool": "prometheus", "nginx": "nginx", "envsubst": "gettext-base"}


def tool(name: str) -> str:
    """The path of ``name``; fails (never skips) when it is missing, saying how to get it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed; `make test` installs it (apt-get install "
                             f"{PACKAGES.get(name, name)})")
    return path


def run(args: list[str], *, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool; the result with its output (callers assert on ``returncode``)."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """A failed run's command and output, for an assertion message."""
    return f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
