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


def test_model_settings_from_the_environment_keep_the_key_secret() -> None:
    s = load_settings(environ={"AOSK_LLM_BASE_URL": "http://vllm:8000/v1", "AOSK_LLM_MODEL": "qwen",
                               "AOSK_LLM_API_KEY": "sk-very-secret", "AOSK_LLM_TIMEOUT_S": "12.5",
                               "AOSK_LLM_MAX_RETRIES": "4", "AOSK_EMBEDDINGS_BASE_URL": "http://tei:80/v1",
                               "AOSK_EMBEDDINGS_MODEL": "bge", "AOSK_EMBEDDINGS_API_KEY": "sk-other",
                               "AOSK_EMBEDDINGS_DIMENSION": "384"})
    assert (s.llm.base_url, s.llm.model, s.llm.timeout_s, s.llm.max_retries) == ("http://vllm:8000/v1", "qwen", 12.5, 4)
    assert s.llm.api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(s) and "sk-other" not in str(s.model_dump())
    assert (s.embeddings.base_url, s.embeddings.model, s.embeddings.dimension) == ("http://tei:80/v1", "bge", 384)
    defaults = load_settings(environ={})
    assert defaults.llm.base_url is None and defaults.llm.api_key.get_secret_value() == ""
    assert defaults.embeddings.dimension is None


def test_no_model_server_says_what_to_do(tmp_path: Path) -> None:
    from aosk.endpoints import resolve_model_url

    s = load_settings(environ={"AOSK_STATE_DIR": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="AOSK_EMBEDDINGS_BASE_URL or run `aosk dev up`") as e:
        resolve_model_url(s, "embeddings")
    assert e.value.key == "embeddings.base_url"
    assert resolve_model_url(load_settings(environ={"AOSK_LLM_BASE_URL": "http://x/v1"}), "llm") == ("http://x/v1",
                                                                                                       False)


def test_an_embedding_dimension_other_than_the_memory_index_is_refused(tmp_path: Path) -> None:
    from aosk.runtime.models import provider_from_settings

    s = load_settings(environ={"AOSK_LLM_BASE_URL": "http://x/v1", "AOSK_EMBEDDINGS_BASE_URL": "http://x/v1",
                               "AOSK_EMBEDDINGS_DIMENSION": "768"})
    with pytest.raises(ConfigError, match="memory.embedding_dimension 384") as e:
        provider_from_settings(s)
    assert e.value.key == "embeddings.dimension"


def test_runtime_settings_from_the_environment() -> None:
    s = load_settings(environ={"AOSK_RUNTIME_GROUP_ID": "rt", "AOSK_RUNTIME_MODEL_CONCURRENCY": "8",
                               "AOSK_RUNTIME_TOOL_CONCURRENCY": "2", "AOSK_RUNTIME_AGING_S": "2.5",
                               "AOSK_RUNTIME_TENANT_WEIGHTS": '{"acme": 2, "globex": 0.5}',
                               "AOSK_RUNTIME_LLM_TIMEOUT_MS": "90000", "AOSK_RUNTIME_TOOL_TIMEOUT_MS": "5000"})
    rt = s.runtime
    assert (rt.group_id, rt.model_concurrency, rt.tool_concurrency, rt.aging_s) == ("rt", 8, 2, 2.5)
    assert rt.tenant_weights == {"acme": 2.0, "globex": 0.5}
    assert (rt.llm_timeout_ms, rt.tool_timeout_ms) == (90_000, 5_000)
    defaults = load_settings(environ={}).runtime
    assert (defaults.group_id, defaults.model_concurrency, defaults.tool_concurrency) == ("aosk-runtime", 16, 4)
    assert (defaults.aging_s, defaults.tenant_weights) == (10.0, {})
    assert (defaults.llm_timeout_ms, defaults.tool_timeout_ms) == (200_000, 60_000)


def test_runtime_tenant_weights_from_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("runtime:\n  tenant_weights:\n    acme: 3\n")
    assert load_settings(cfg, environ={}).runtime.tenant_weights == {"acme": 3.0}


@pytest.mark.parametrize(
    ("value", "message"),
    [("acme=2", "must be a JSON object"), ('{"acme": 0}', "weight of tenant 'acme' must be a positive number"),
     ('{"acme": -1}', "positive number"), ('["acme"]', "dictionary")],
)
def test_invalid_tenant_weights_name_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_settings(environ={"AOSK_RUNTIME_TENANT_WEIGHTS": value})
    assert e.value.key == "runtime.tenant_weights"
    assert "AOSK_RUNTIME_TENANT_WEIGHTS" in str(e.value)


def test_every_setting_has_an_environment_variable_and_a_documented_row() -> None:
    from pydantic import BaseModel

    from aosk.config import ENV_KEYS, Settings

    def leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for name, info in model.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                keys |= leaves(kind, f"{prefix}{name}.")
            else:
                keys.add(prefix + name)
        return keys

    assert leaves(Settings) == set(ENV_KEYS.values())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {line for line in doc.splitlines() if line.startswith("| `")}
    missing = [f"{key} ({var})" for var, key in ENV_KEYS.items()
               if not any(row.startswith(f"| `{key}` | `{var}` |") for row in rows)]
    assert not missing, f"add a row to docs/configuration.md for: {missing}"


def test_the_guides_cache_section_and_redis_variables(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("cache:\n  backend: redis\n  redis:\n    host: redis.example.com\n    port: 6380\n"
                   "    password: from-file\n    db: 2\n    pool_size: 50\n")
    s = load_settings(cfg, environ={"AOSK_REDIS_PASSWORD": "s3cret", "AOSK_REDIS_KEY_PREFIX": "prod:"})
    r = s.cache.redis
    assert (s.cache.backend, r.host, r.port, r.db, r.pool_size, r.key_prefix) == (
        "redis", "redis.example.com", 6380, 2, 50, "prod:")
    assert r.password is not None and r.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    env = load_settings(environ={"AOSK_CACHE_BACKEND": "redis", "AOSK_REDIS_HOST": "redis"})
    assert (env.cache.backend, env.cache.redis.host, env.cache.redis.port) == ("redis", "redis", 6379)
    assert load_settings(environ={}).cache.backend == "none"
    # the deployment guide's Compose file sets only the host
    assert load_settings(environ={"AOSK_REDIS_HOST": "redis"}).cache.backend == "redis"


@pytest.mark.parametrize(("environ", "key", "message"), [
    ({"AOSK_CACHE_BACKEND": "redis"}, "cache.redis.host", "required with cache.backend redis"),
    ({"AOSK_CACHE_BACKEND": "none", "AOSK_REDIS_HOST": "redis"}, "cache.backend", "set cache.backend: redis"),
    ({"AOSK_CACHE_BACKEND": "memcached"}, "cache.backend", "'none' or 'redis'"),
    ({"AOSK_CACHE_BACKEND": "redis", "AOSK_REDIS_HOST": "r", "AOSK_REDIS_PORT": "0"}, "cache.redis.port",
     "greater than or equal to 1 (from AOSK_REDIS_PORT)"),
    ({"AOSK_MESSAGE_QUEUE_BACKEND": "rabbitmq"}, "message_queue.backend", "backend 'rabbitmq' is not supported"),
])
def test_bad_cache_and_message_queue_settings_name_the_key(environ: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ=environ)
    assert e.value.key == key and message in e.value.problem, e.value


def test_the_guides_message_queue_section_maps_onto_kafka(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("message_queue:\n  backend: kafka\n  kafka:\n    bootstrap_servers: k1:9092,k2:9092\n"
                   "    topic_prefix: prod\n")
    s = load_settings(cfg, environ={})
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092" and s.kafka.journal_topic == "prod.agent-events"
    assert s.message_queue.backend == "kafka"
    # the environment still wins over the file
    assert load_settings(cfg, environ={"AOSK_KAFKA_BOOTSTRAP": "k9:9092"}).kafka.bootstrap_servers == "k9:9092"
    cfg.write_text("kafka:\n  topic_prefix: a\nmessage_queue:\n  kafka:\n    topic_prefix: b\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, environ={})
    assert e.value.key == "message_queue.kafka.topic_prefix" and "disagrees with kafka.topic_prefix" in e.value.problem


@pytest.mark.parametrize(("text", "key"), [
    # the deployment guide's example, as written
    ('message_queue:\n  backend: "redis"\n  redis:\n    host: "redis.example.com"\n    port: 6379\n'
     '    queue_prefix: "aosk:"\n', "message_queue.backend"),
    ("message_queue:\n  backend: rabbitmq\n", "message_queue.backend"),
    ("message_queue:\n  backend: kafka\n  redis:\n    host: r\n", "message_queue.redis"),
])
def test_other_message_queues_are_refused_with_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, environ={})
    assert e.value.key == key
    assert "the message queue is Kafka" in e.value.problem and "message_queue.backend: kafka" in e.value.problem
