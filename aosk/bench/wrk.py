"""Closed-loop runs of ``wrk`` for ``aosk bench api``: N keep-alive connections, each
sending its next request as soon as the last is answered; every request a POST of one
JSON body with a unique ``Idempotency-Key`` (a Lua script). Reports requests, non-2xx
answers and wrk's own CPU time (so it can be seen not to be the bottleneck)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aosk.errors import AoskError

__all__ = ["ClosedRun", "closed_loop", "wrk_path", "LUA_TEMPLATE"]

# %(...)s placeholders are filled in Python; the body's two %s in Lua (key, key).
LUA_TEMPLATE = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
local template = %(body)s
request = function()
  counter = counter + 1
  local key = string.format("%(run)s-%%d-%%d", tid or 0, counter)
  wrk.headers["Idempotency-Key"] = key
  return wrk.format(nil, nil, nil, string.format(template, key))
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "timeout": %%d}\\n', summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
"""


@dataclass(frozen=True)
class ClosedRun:
    connections: int
    requests: int
    accepted: int
    """Requests answered 2xx."""
    seconds: float
    cpu: float
    """wrk's user + system CPU seconds."""

    @property
    def per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def cpu_share(self) -> float:
        """wrk's CPU as a share of one core."""
        return self.cpu / self.seconds


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise AoskError("aosk bench api needs wrk on PATH (Debian/Ubuntu: apt-get install wrk)")
    return found


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def closed_loop(url: str, *, body_template: str, headers: dict[str, str], connections: int, seconds: float,
                run: str, threads: int = 1) -> ClosedRun:
    """``body_template``: the JSON body with ``%s`` where the request's unique key goes
    (a literal ``%`` written ``%%``)."""
    lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
    script = LUA_TEMPLATE % {"headers": lines, "body": _lua_string(body_template), "run": run}
    with tempfile.TemporaryDirectory(prefix="aosk-bench-wrk-") as tmp:
        path = Path(tmp) / "post.lua"
        path.write_text(script)
        proc = subprocess.Popen([wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout",
                                 "10s", "-s", str(path), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    found = [line for line in out.splitlines() if line.startswith("WRKJSON ")]
    if proc.returncode != 0 or not found:
        raise AoskError(f"wrk failed (exit {proc.returncode}):\n{out}")
    s = json.loads(found[-1][len("WRKJSON "):])
    failed = s["non2xx"] + s["connect"] + s["read"] + s["write"] + s["timeout"]
    return ClosedRun(connections=connections, requests=s["requests"], accepted=max(0, s["requests"] - failed),
                     seconds=s["duration_us"] / 1e6, cpu=usage.ru_utime + usage.ru_stime)
