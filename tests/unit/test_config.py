from pathlib import Path

import pytest

from aosk.config import load_settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import ConfigError


def test_defaults_are_the_embedded_stack() -> None:
    s = load_settings(environ={})
    assert s.storage.backend == "postgresql"
    assert s.storage.postgresql.host is None
    assert s.kafka.bootstrap_servers is None
    assert s.kafka.journal_partitions == 12
    assert s.kafka.journal_topic == "aosk.agent-events"


def test_yaml_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "node_id: node-7\n"
        "storage:\n  backend: postgresql\n  postgresql:\n    host: db.example\n    port: 5433\n"
        "    database: aosk\n    user: aosk_user\n    password: from-file\n    pool_size: 20\n    max_overflow: 40\n"
        "kafka:\n  bootstrap_servers: k1:9092\n"
    )
    s = load_settings(cfg, environ={"AOSK_POSTGRESQL_PASSWORD": "p@ss/word", "AOSK_NODE_ID": "node-9"})
    assert s.node_id == "node-9"
    assert s.storage.postgresql.pool_size == 20
    assert s.storage.postgresql.max_overflow == 40
    ep = resolve_endpoints(s)
    assert ep.bootstrap == "k1:9092"
    assert ep.dsn == "postgresql://aosk_user:p%40ss%2Fword@db.example:5433/aosk"


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: a:1\n")
    assert load_settings(environ={"AOSK_CONFIG": str(cfg)}).kafka.bootstrap_servers == "a:1"


def test_dsn_wins(tmp_path: Path) -> None:
    s = load_settings(
        environ={"AOSK_POSTGRESQL_DSN": "postgresql://x@y/z", "AOSK_POSTGRESQL_HOST": "h",
                 "AOSK_KAFKA_BOOTSTRAP": "b:1"}
    )
    assert resolve_endpoints(s).dsn == "postgresql://x@y/z"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"AOSK_POSTGRESQL_PORT": "not-a-port"}, "storage.postgresql.port"),
        ({"AOSK_POSTGRESQL_PORT": "70000"}, "storage.postgresql.port"),
        ({"AOSK_STORAGE_BACKEND": "redis"}, "storage.backend"),
        ({"AOSK_NODE_ID": "bad id"}, "node_id"),
        ({"AOSK_KAFKA_PARTITIONS": "0"}, "kafka.journal_partitions"),
    ],
)
def test_invalid_value_names_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ=environ)
    assert e.value.key == key
    assert key in str(e.value)


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  postgresql:\n    hots: typo\n")
    with pytest.raises(ConfigError, match="storage.postgresql.hots"):
        load_settings(cfg, environ={})


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_no_endpoints_says_what_to_do(tmp_path: Path) -> None:
    s = load_settings(environ={"AOSK_STATE_DIR": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="aosk dev up"):
        resolve_endpoints(s)
