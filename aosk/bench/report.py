"""Measured figures go into docs/benchmarks.md, one section per benchmark.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``;
a new run replaces its own section and leaves the others alone.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

HEADER = """# Benchmarks

Measured by `aosk bench <name>` on the machine named in each section. Figures are
reported next to a baseline measured in the same run (the broker's own producer perf
tool, raw COPY), because absolute numbers say more about the machine than about AOSK.
Re-run any of them with the command shown; each run rewrites only its own section.
"""


def machine_line() -> str:
    import os

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}")


def write_section(path: Path, name: str, body: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
