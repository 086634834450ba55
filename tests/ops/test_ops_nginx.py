"""ops/nginx/nginx.conf.template: rendered as the nginx image renders it (envsubst on the
NGINX_* variables only), it passes `nginx -t` in a throwaway prefix, and it keeps the
deployment guide's load balancing: least_conn, keepalive 32, HTTP/1.1 upstreams,
X-Forwarded-*, the timeouts, no buffering for SSE, /health answered by nginx, retries only
for reads and for POSTs carrying an Idempotency-Key."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ops_tools import OPS, ROOT, explain, run, tool

TEMPLATE = OPS / "nginx" / "nginx.conf.template"
PLACEHOLDERS = {"NGINX_LISTEN", "NGINX_UPSTREAM_SERVERS", "NGINX_RUN_DIR", "NGINX_ERROR_LOG", "NGINX_ACCESS_LOG"}


def render(values: dict[str, str], out: Path) -> str:
    """The template through envsubst, limited to the NGINX_* placeholders (as the nginx
    image's 20-envsubst-on-templates.sh does with NGINX_ENVSUBST_FILTER=^NGINX_)."""
    shell_format = " ".join(f"${{{name}}}" for name in sorted(values))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values}
    text = subprocess.run([tool("envsubst"), shell_format], input=TEMPLATE.read_text(), capture_output=True,
                          text=True, env=env, check=True, timeout=30).stdout
    out.write_text(text)
    return text


def local_values(prefix: Path) -> dict[str, str]:
    (prefix / "run").mkdir()
    return {"NGINX_LISTEN": "127.0.0.1:18080",
            "NGINX_UPSTREAM_SERVERS": "server 127.0.0.1:18081 max_fails=3 fail_timeout=10s; "
                                      "server 127.0.0.1:18082 max_fails=3 fail_timeout=10s;",
            "NGINX_RUN_DIR": str(prefix / "run"),
            "NGINX_ERROR_LOG": str(prefix / "error.log"),
            "NGINX_ACCESS_LOG": str(prefix / "access.log")}


def nginx_t(prefix: Path, conf: Path):
    return run([tool("nginx"), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])


def test_the_template_names_exactly_its_placeholders() -> None:
    assert set(re.findall(r"\$\{([A-Z_]+)\}", TEMPLATE.read_text())) == PLACEHOLDERS


def test_rendered_for_local_ports_nginx_accepts_it(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    text = render(local_values(tmp_path), conf)
    assert not re.search(r"\$\{NGINX_[A-Z_]+\}", text)
    assert "$proxy_add_x_forwarded_for" in text and "$http_idempotency_key" in text  # nginx's own kept
    result = nginx_t(tmp_path, conf)
    assert result.returncode == 0, explain(result)
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_rendering(tmp_path: Path) -> None:
    values = local_values(tmp_path)
    values["NGINX_UPSTREAM_SERVERS"] = "server 127.0.0.1:18081"  # no semicolon
    conf = tmp_path / "nginx.conf"
    render(values, conf)
    assert nginx_t(tmp_path, conf).returncode != 0


def test_compose_sets_every_placeholder_and_its_rendering_passes(tmp_path: Path) -> None:
    nginx = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nginx"]
    env = {k: str(v) for k, v in nginx["environment"].items()}
    assert PLACEHOLDERS <= set(env)
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert any(v.endswith(":/etc/nginx/templates/nginx.conf.template:ro") for v in nginx["volumes"])
    # compose's values, with the host names and container paths moved to this machine
    values = {k: env[k] for k in PLACEHOLDERS}
    values["NGINX_UPSTREAM_SERVERS"] = values["NGINX_UPSTREAM_SERVERS"].replace("api:", "127.0.0.1:")
    values["NGINX_LISTEN"] = "127.0.0.1:18080"
    values["NGINX_RUN_DIR"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    conf = tmp_path / "nginx.conf"
    render(values, conf)
    result = nginx_t(tmp_path, conf)
    assert result.returncode == 0, explain(result)


def _block(text: str, header: str) -> str:
    start = text.index(header)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j + 1]
    raise AssertionError(f"unclosed block {header}")


@pytest.fixture(scope="module")
def conf() -> str:
    # comments dropped, so only directives are matched
    return "\n".join(line.split("#", 1)[0] for line in TEMPLATE.read_text().splitlines())


def test_upstream_is_least_conn_with_keepalive(conf: str) -> None:
    upstream = _block(conf, "upstream aosk_api")
    assert re.search(r"^\s*least_conn;", upstream, re.M)
    assert re.search(r"^\s*keepalive 32;", upstream, re.M)


def test_upstream_requests_are_http11_with_forwarded_headers_and_the_guides_timeouts(conf: str) -> None:
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_set_header X-Real-IP $remote_addr;",
                      "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                      "proxy_set_header X-Forwarded-Proto $scheme;",
                      "proxy_connect_timeout 60s;", "proxy_send_timeout 60s;", "proxy_read_timeout 60s;"):
        assert directive in conf, directive


def test_health_is_answered_by_nginx(conf: str) -> None:
    health = _block(conf, "location = /health")
    assert 'return 200 "healthy\\n";' in health and "proxy_pass" not in health


def test_sse_is_not_buffered(conf: str) -> None:
    sse = _block(conf, "location ~ ^/api/v1/agents/[^/]+/stream$")
    assert "proxy_buffering off;" in sse
    from aosk.api.app import create_app  # the route the regex stands for exists
    from aosk.config import Settings

    paths = create_app(Settings()).openapi()["paths"]
    assert "/api/v1/agents/{agent_id}/stream" in paths


def test_retries_only_for_reads_and_keyed_posts(conf: str) -> None:
    mapping = _block(conf, 'map "$request_method:$http_idempotency_key" $aosk_retry_safe')
    rules = dict(re.findall(r'^\s*("[^"]+"|default)\s+(\d);', mapping, re.M))
    patterns = {k.strip('"').lstrip("~"): v for k, v in rules.items() if k != "default"}
    assert rules["default"] == "0"

    def retried(method: str, key: str) -> bool:
        hits = [v for p, v in patterns.items() if re.search(p, f"{method}:{key}")]
        return bool(hits) and hits[0] == "1"

    assert retried("GET", "") and retried("HEAD", "") and retried("POST", "k-1")
    assert not retried("POST", "") and not retried("DELETE", "") and not retried("DELETE", "k-1")
    assert not retried("PATCH", "k-1")
    root = _block(conf, "location / ")
    assert "proxy_next_upstream off;" in root and "return 418;" in root and "error_page 418 = @retry_safe;" in root
    assert "non_idempotent" in _block(conf, "location @retry_safe")
