"""One typed settings object for every AOSK process.

Sources, lowest precedence first:
  1. defaults (the embedded dev stack: local Kafka + embedded PostgreSQL under ``.aosk/``),
  2. ``config.yaml`` (path from ``--config`` or ``AOSK_CONFIG``; keys as in the deployment
     guide: ``storage.postgresql.*``, ``kafka.*``, ``cache.redis.*``, ``message_queue.*``,
     ``node_id``),
  3. ``AOSK_*`` environment variables (``AOSK_POSTGRESQL_HOST``, ``AOSK_KAFKA_BOOTSTRAP``, ...).

An invalid value fails at start with a :class:`~aosk.errors.ConfigError` naming the key.
The object is frozen and passed in explicitly; nothing reads the environment later.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from aosk.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PostgresSettings(_Section):
    """Where the projections live. Either ``dsn`` or the discrete fields; with neither
    ``host`` nor ``dsn`` set, the embedded dev stack's PostgreSQL is used."""

    host: str | None = None
    """Server host name or address; unset means the embedded dev stack."""
    port: int = Field(5432, ge=1, le=65535)
    """Server TCP port."""
    database: str = "aosk"
    """Database holding the projections."""
    user: str = "postgres"
    """Role to connect as."""
    password: str | None = None
    """Password; prefer ``AOSK_POSTGRESQL_PASSWORD`` over writing it into config.yaml."""
    pool_size: int = Field(10, ge=1, le=1000)
    """Connections kept open per process."""
    max_overflow: int = Field(10, ge=0, le=1000)
    """Extra connections a pool may open under load, on top of ``pool_size``."""
    dsn: str | None = None
    """A full libpq connection string; wins over the discrete fields."""


class StorageSettings(_Section):
    backend: Literal["postgresql"] = "postgresql"
    """The projection store. Only PostgreSQL (15+, with pgvector) is supported."""
    postgresql: PostgresSettings = PostgresSettings()


class KafkaSettings(_Section):
    bootstrap_servers: str | None = None
    """Comma-separated ``host:port`` list; unset means the embedded dev stack's broker."""
    journal_partitions: int = Field(12, ge=1, le=10_000)
    """Partition count of the journal, fixed when it is created (never changed later)."""
    replication_factor: int = Field(1, ge=1, le=10)
    """Replication of the AOSK topics (production: 3)."""
    topic_prefix: str = Field("aosk", pattern=r"^[A-Za-z0-9._-]+$")
    """Topics are ``<prefix>.agent-events``, ``<prefix>.agent-transitions``, ``<prefix>.dead-letters``."""
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    """Consumer session timeout: how fast a dead process's partitions move."""
    max_event_bytes: int = Field(1024 * 1024, ge=1024, le=2 * 1024 * 1024)
    """Largest encoded event the SDK produces (the journal accepts at most 2 MiB)."""

    @property
    def journal_topic(self) -> str:
        return f"{self.topic_prefix}.agent-events"

    @property
    def transitions_topic(self) -> str:
        return f"{self.topic_prefix}.agent-transitions"

    @property
    def dead_letters_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letters"

    @property
    def worker_snapshots_topic(self) -> str:
        """The workers' compacted snapshot topic (``aosk.streams.snapshots``)."""
        return f"{self.topic_prefix}-worker-snapshots"


class MessageQueueSettings(_Section):
    """The deployment guide's ``message_queue`` section. AOSK's journal *is* its message
    queue and lives in Kafka: ``backend: kafka`` is accepted and ``message_queue.kafka.*``
    is read as ``kafka.*``; Redis and RabbitMQ are refused (they keep no replayable,
    partitioned log)."""

    backend: str = "kafka"
    """Only ``kafka``."""

    @field_validator("backend")
    @classmethod
    def _only_kafka(cls, value: str) -> str:
        if value != "kafka":
            raise ValueError(
                f"backend {value!r} is not supported: AOSK's journal is a Kafka topic (events are replayed from "
                "it, partitioned by agent), so the message queue is Kafka; set message_queue.backend: kafka "
                "(or leave the section out) and configure kafka.bootstrap_servers")
        return value


class RedisSettings(_Section):
    """The Redis server of ``cache.backend: redis`` (the deployment guide's ``cache.redis``)."""

    host: str | None = None
    """Server host name or address; required with ``cache.backend: redis``."""
    port: int = Field(6379, ge=1, le=65535)
    """Server TCP port."""
    password: SecretStr | None = None
    """``AUTH`` password; prefer ``AOSK_REDIS_PASSWORD`` over writing it into config.yaml. Never logged."""
    db: int = Field(0, ge=0, le=1_000_000)
    """Logical database number."""
    pool_size: int = Field(50, ge=1, le=10_000)
    """Connections kept per API process at most."""
    key_prefix: str = Field("aosk:", max_length=64)
    """Prefix of every key AOSK writes (``<prefix>ratelimit:<key id>``), so clusters can share a server."""
    timeout_s: float = Field(0.25, gt=0, le=30)
    """Seconds to connect or to wait for an answer before Redis counts as down for a request."""
    retry_s: float = Field(1.0, gt=0, le=3600)
    """After a Redis failure, seconds an API process uses its own per-process limits before asking Redis again."""


class CacheSettings(_Section):
    """Optional shared state of the API nodes (the deployment guide's ``cache`` section):
    with ``backend: redis`` every API process takes a key's rate-limit tokens from one
    bucket in Redis, so a limit holds for the whole cluster; with ``none`` each process
    has its own buckets (docs/api.md "Rate limits")."""

    backend: Literal["none", "redis"] = "none"
    """``none`` or ``redis``. Left unset with ``cache.redis.host`` given, it is ``redis``: the
    deployment guide's Compose file sets only ``AOSK_REDIS_HOST``."""
    redis: RedisSettings = RedisSettings()

    @model_validator(mode="before")
    @classmethod
    def _a_redis_host_means_redis(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backend" not in data:
            redis = data.get("redis")
            host = redis.get("host") if isinstance(redis, dict) else getattr(redis, "host", None)
            if host:
                return {**data, "backend": "redis"}
        return data

    @model_validator(mode="after")
    def _redis_needs_a_host(self) -> CacheSettings:
        # ConfigError passes through pydantic (it is no ValueError) and names the exact key
        if self.backend == "redis" and not self.redis.host:
            raise ConfigError("cache.redis.host", "required with cache.backend redis (AOSK_REDIS_HOST)")
        if self.backend == "none" and self.redis.host:
            raise ConfigError("cache.backend", f"is none, but cache.redis.host is {self.redis.host!r}: set "
                              "cache.backend: redis (AOSK_CACHE_BACKEND=redis) to share rate limits through it, "
                              "or unset the host")
        return self


class DevStackSettings(_Section):
    state_dir: Path = Path(".aosk")
    """Data, logs and recorded ports of the embedded stack."""
    cache_dir: Path = Path("~/.cache/aosk")
    """Where the Kafka jars fetched from Maven Central are kept, outside the repository."""
    kafka_heap: str = Field("512m", pattern=r"^[0-9]+[kmgKMG]$")
    """JVM heap of the embedded broker (-Xmx)."""


MemoryIndex = Literal["ivfflat", "halfvec", "hnsw", "hnsw_bq"]
"""The kinds of vector index over memories' embeddings (``aosk.projectors.memory_index``)."""


class MemorySettings(_Section):
    embedding_dimension: int = Field(384, ge=1, le=16_000)
    """Dimension d of every embedding in the cluster (``vector(d)``)."""
    index: MemoryIndex = "ivfflat"
    """The vector index recall uses: ``ivfflat`` (IVFFlat over 16-bit floats, built again
    by the projectors as the table doubles; candidates re-ranked by exact cosine distance),
    ``halfvec`` (HNSW over 16-bit floats, re-ranked), ``hnsw`` (HNSW over the full vectors)
    or ``hnsw_bq`` (HNSW over binary-quantized vectors, re-ranked). ``aosk db migrate``, the
    projectors and ``aosk replay`` replace a schema's index of another kind by this one."""


class LlmSettings(_Section):
    """The chat model the runtime calls: any server speaking the OpenAI HTTP protocol
    (vLLM, llama.cpp server, Ollama, LiteLLM, OpenAI)."""

    base_url: str | None = None
    """OpenAI base URL, e.g. ``http://vllm:8000/v1``; unset means the dev stack's stand-in
    model server (``aosk dev up``)."""
    model: str = Field("stand-in-chat", min_length=1)
    """Model name sent with every request."""
    api_key: SecretStr = SecretStr("")
    """Bearer key; empty for servers without authentication (the stand-in). Never logged;
    prefer ``AOSK_LLM_API_KEY`` over writing it into config.yaml."""
    timeout_s: float = Field(60.0, gt=0, le=3600)
    """Seconds one attempt may take (connecting and waiting for the answer)."""
    max_retries: int = Field(2, ge=0, le=20)
    """Retries after the first attempt on 408, 409, 429, 5xx, connection errors and timeouts
    (docs/runtime.md "The model provider"); embeddings calls use the same."""


class EmbeddingsSettings(_Section):
    """The embedding model (``/v1/embeddings``) behind memory's vectors."""

    base_url: str | None = None
    """OpenAI base URL; unset means the dev stack's stand-in model server."""
    model: str = Field("stand-in-embedding", min_length=1)
    """Model name sent with every request."""
    api_key: SecretStr = SecretStr("")
    """Bearer key; empty for servers without authentication. Never logged."""
    dimension: int | None = Field(None, ge=1, le=16_000)
    """Vector dimension asked for (the request's ``dimensions``); unset means
    ``memory.embedding_dimension``, the only dimension the memory index stores."""


class ApiSettings(_Section):
    host: str = "0.0.0.0"
    """Address ``aosk api`` listens on."""
    port: int = Field(8080, ge=1, le=65535)
    """Port ``aosk api`` listens on (the deployment guide's 8080)."""
    schema_name: str = Field("aosk_api", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema of the API's own tables (keys), outside the projection schema
    ``aosk replay`` swaps."""
    idempotency_ttl_s: int = Field(86_400, ge=1)
    """Seconds an ``Idempotency-Key`` record is kept (a retry after that is a new request)."""
    idempotency_lease_s: float = Field(30.0, gt=0)
    """Seconds a pending ``Idempotency-Key`` is leased to the request producing it; a
    retry after the lease expired (its producer crashed) takes it over with the same event id."""
    consistency_wait_s: float = Field(5.0, ge=0)
    """Longest a read with an ``AOSK-Consistency-Token`` waits for the projection (then 504)."""
    rate_limit_per_s: float = Field(1000.0, ge=0)
    """Requests per second per API key (a token bucket) in each API process, or in the whole
    cluster with ``cache.backend: redis``; 0 turns it off."""
    rate_limit_burst: int = Field(2000, ge=1)
    """Bucket size: the requests a key may send at once after being idle."""
    max_body_bytes: int = Field(1_048_576, ge=1)
    """Largest request body accepted (413 above it, checked before parsing)."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Port of the API's Prometheus ``/metrics`` (for operators, never the public port);
    ``None``: no metrics (docs/api.md "Metrics")."""


class ToolsSettings(_Section):
    """How agents' tools run (``aosk.runtime.tools``): each call in a worker process that
    is killed at its timeout. Tools are discovered through the entry-point group
    ``aosk.tools`` (fixed, not a setting)."""

    timeout_s: float = Field(30.0, gt=0, le=3600)
    """Seconds a tool call may run before its process is killed, for tools that do not
    set their own ``timeout_s``."""
    max_result_bytes: int = Field(65_536, ge=256, le=524_288)
    """Longest result (UTF-8 JSON) handed back for tools that do not set their own; a
    longer one is cut with a visible marker. At most 512 KiB, half the SDK's default
    ``kafka.max_event_bytes``, so a result fits in the event that records it."""
    workers: int = Field(2, ge=1, le=256)
    """Warm worker processes per runner: the most tool calls that run at once."""


class RuntimeSettings(_Section):
    """The agent runtime (``aosk runtime``): how many calls it makes at once, how it shares
    them between tenants and priorities (``aosk.runtime.scheduler``), and the limits it
    writes into the steps it requests."""

    group_id: str = Field("aosk-runtime", min_length=1, max_length=255)
    """Kafka consumer group of the runtime processes; they share the journal's partitions."""
    model_concurrency: int = Field(16, ge=1, le=10_000)
    """Model calls one runtime process has in flight at once."""
    tool_concurrency: int = Field(4, ge=1, le=10_000)
    """Tool runs one runtime process has in flight at once."""
    aging_s: float = Field(10.0, gt=0, le=86_400)
    """Seconds of waiting that add one point of priority to a queued agent, so nothing
    starves: priority 0 outranks a fresh priority 100 after ``100 * aging_s``."""
    tenant_weights: dict[str, float] = {}
    """Fair share of each tenant relative to the others (a tenant not listed weighs 1.0).
    In the environment, a JSON object: ``{"acme": 2, "globex": 0.5}``."""
    llm_timeout_ms: int = Field(200_000, ge=1, le=3_600_000)
    """``timeout_ms`` written into each ``LlmCallRequested``: when the kernel times the call out
    (then the turn is asked again, up to 3 attempts). Above ``llm.timeout_s`` x (1 +
    ``llm.max_retries``), so the provider's own retries finish first."""
    tool_timeout_ms: int = Field(60_000, ge=1, le=3_600_000)
    """``timeout_ms`` written into each ``ToolCallRequested``: when the kernel times the call out.
    Above ``tools.timeout_s``, so a tool's worker is killed (an error result) before that."""

    @field_validator("tenant_weights", mode="before")
    @classmethod
    def _weights_from_json(cls, value: Any) -> Any:
        if isinstance(value, str):  # from AOSK_RUNTIME_TENANT_WEIGHTS
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f'must be a JSON object such as {{"acme": 2}}: {e.msg}') from e
        return value

    @field_validator("tenant_weights")
    @classmethod
    def _weights_positive(cls, value: dict[str, float]) -> dict[str, float]:
        for tenant, weight in value.items():
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of tenant {tenant!r} must be a positive number, not {weight!r}")
        return value


class Settings(_Section):
    """Everything an AOSK process needs to know, validated once at start."""

    node_id: str = Field("node-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    """This process's node name (worker data directory and metrics label)."""
    storage: StorageSettings = StorageSettings()
    kafka: KafkaSettings = KafkaSettings()
    message_queue: MessageQueueSettings = MessageQueueSettings()
    cache: CacheSettings = CacheSettings()
    dev: DevStackSettings = DevStackSettings()
    memory: MemorySettings = MemorySettings()
    api: ApiSettings = ApiSettings()
    llm: LlmSettings = LlmSettings()
    embeddings: EmbeddingsSettings = EmbeddingsSettings()
    tools: ToolsSettings = ToolsSettings()
    runtime: RuntimeSettings = RuntimeSettings()


# Environment variable -> dotted key. Kept explicit: the documented names are the contract.
ENV_KEYS: Mapping[str, str] = {
    "AOSK_NODE_ID": "node_id",
    "AOSK_STORAGE_BACKEND": "storage.backend",
    "AOSK_POSTGRESQL_HOST": "storage.postgresql.host",
    "AOSK_POSTGRESQL_PORT": "storage.postgresql.port",
    "AOSK_POSTGRESQL_DATABASE": "storage.postgresql.database",
    "AOSK_POSTGRESQL_USER": "storage.postgresql.user",
    "AOSK_POSTGRESQL_PASSWORD": "storage.postgresql.password",
    "AOSK_POSTGRESQL_POOL_SIZE": "storage.postgresql.pool_size",
    "AOSK_POSTGRESQL_MAX_OVERFLOW": "storage.postgresql.max_overflow",
    "AOSK_POSTGRESQL_DSN": "storage.postgresql.dsn",
    "AOSK_KAFKA_BOOTSTRAP": "kafka.bootstrap_servers",
    "AOSK_KAFKA_PARTITIONS": "kafka.journal_partitions",
    "AOSK_KAFKA_REPLICATION": "kafka.replication_factor",
    "AOSK_TOPIC_PREFIX": "kafka.topic_prefix",
    "AOSK_KAFKA_SESSION_TIMEOUT_MS": "kafka.session_timeout_ms",
    "AOSK_MAX_EVENT_BYTES": "kafka.max_event_bytes",
    "AOSK_MESSAGE_QUEUE_BACKEND": "message_queue.backend",
    "AOSK_CACHE_BACKEND": "cache.backend",
    "AOSK_REDIS_HOST": "cache.redis.host",
    "AOSK_REDIS_PORT": "cache.redis.port",
    "AOSK_REDIS_PASSWORD": "cache.redis.password",
    "AOSK_REDIS_DB": "cache.redis.db",
    "AOSK_REDIS_POOL_SIZE": "cache.redis.pool_size",
    "AOSK_REDIS_KEY_PREFIX": "cache.redis.key_prefix",
    "AOSK_REDIS_TIMEOUT_S": "cache.redis.timeout_s",
    "AOSK_REDIS_RETRY_S": "cache.redis.retry_s",
    "AOSK_STATE_DIR": "dev.state_dir",
    "AOSK_CACHE_DIR": "dev.cache_dir",
    "AOSK_KAFKA_HEAP": "dev.kafka_heap",
    "AOSK_EMBEDDING_DIMENSION": "memory.embedding_dimension",
    "AOSK_MEMORY_INDEX": "memory.index",
    "AOSK_API_HOST": "api.host",
    "AOSK_API_PORT": "api.port",
    "AOSK_API_SCHEMA": "api.schema_name",
    "AOSK_API_IDEMPOTENCY_TTL_S": "api.idempotency_ttl_s",
    "AOSK_API_IDEMPOTENCY_LEASE_S": "api.idempotency_lease_s",
    "AOSK_API_CONSISTENCY_WAIT_S": "api.consistency_wait_s",
    "AOSK_API_RATE_LIMIT_PER_S": "api.rate_limit_per_s",
    "AOSK_API_RATE_LIMIT_BURST": "api.rate_limit_burst",
    "AOSK_API_MAX_BODY_BYTES": "api.max_body_bytes",
    "AOSK_API_METRICS_PORT": "api.metrics_port",
    "AOSK_LLM_BASE_URL": "llm.base_url",
    "AOSK_LLM_MODEL": "llm.model",
    "AOSK_LLM_API_KEY": "llm.api_key",
    "AOSK_LLM_TIMEOUT_S": "llm.timeout_s",
    "AOSK_LLM_MAX_RETRIES": "llm.max_retries",
    "AOSK_EMBEDDINGS_BASE_URL": "embeddings.base_url",
    "AOSK_EMBEDDINGS_MODEL": "embeddings.model",
    "AOSK_EMBEDDINGS_API_KEY": "embeddings.api_key",
    "AOSK_EMBEDDINGS_DIMENSION": "embeddings.dimension",
    "AOSK_TOOLS_TIMEOUT_S": "tools.timeout_s",
    "AOSK_TOOLS_MAX_RESULT_BYTES": "tools.max_result_bytes",
    "AOSK_TOOLS_WORKERS": "tools.workers",
    "AOSK_RUNTIME_GROUP_ID": "runtime.group_id",
    "AOSK_RUNTIME_MODEL_CONCURRENCY": "runtime.model_concurrency",
    "AOSK_RUNTIME_TOOL_CONCURRENCY": "runtime.tool_concurrency",
    "AOSK_RUNTIME_AGING_S": "runtime.aging_s",
    "AOSK_RUNTIME_TENANT_WEIGHTS": "runtime.tenant_weights",
    "AOSK_RUNTIME_LLM_TIMEOUT_MS": "runtime.llm_timeout_ms",
    "AOSK_RUNTIME_TOOL_TIMEOUT_MS": "runtime.tool_timeout_ms",
}


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, a YAML file and ``AOSK_*`` variables.

    ``config_path`` falls back to ``AOSK_CONFIG``; a missing explicit file is an error.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = config_path if config_path is not None else env.get("AOSK_CONFIG")
    if path:
        raw = _read_yaml(Path(path))
        _message_queue_onto_kafka(raw)  # before the environment, which wins over the file
    for var, key in ENV_KEYS.items():
        if var in env:
            _set_dotted(raw, key, env[var])
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        env_var = next((v for v, k in ENV_KEYS.items() if k == key and v in env), None)
        where = f" (from {env_var})" if env_var else ""
        raise ConfigError(key, f"{first['msg']}{where}") from e


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("AOSK_CONFIG", f"cannot read {path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("AOSK_CONFIG", f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("(root)", f"{path} must hold a mapping, not {type(data).__name__}")
    return data


def _message_queue_onto_kafka(raw: dict[str, Any]) -> None:
    """``message_queue.kafka.*`` is read as ``kafka.*`` (the deployment guide's section for
    the journal's broker); the backend's own subsections of other queues are refused."""
    mq = raw.get("message_queue")
    if mq is None:
        return
    if not isinstance(mq, dict):
        raise ConfigError("message_queue", f"must be a mapping, not {type(mq).__name__}")
    backend = mq.get("backend", "kafka")
    for other in ("redis", "rabbitmq"):
        if other in mq:
            detail = (f"backend {backend!r} is not supported" if backend != "kafka"
                      else f"message_queue.{other} is given but the backend is kafka")
            raise ConfigError("message_queue.backend" if backend != "kafka" else f"message_queue.{other}",
                              f"{detail}: AOSK's journal is a Kafka topic, so the message queue is Kafka; set "
                              "message_queue.backend: kafka and configure message_queue.kafka.* or kafka.*")
    given = mq.pop("kafka", None)
    if given is None:
        return
    if not isinstance(given, dict):
        raise ConfigError("message_queue.kafka", f"must be a mapping, not {type(given).__name__}")
    kafka = raw.setdefault("kafka", {})
    if not isinstance(kafka, dict):
        raise ConfigError("kafka", f"must be a mapping, not {type(kafka).__name__}")
    for name, value in given.items():
        if name in kafka and kafka[name] != value:
            raise ConfigError(f"message_queue.kafka.{name}",
                              f"{value!r} disagrees with kafka.{name} {kafka[name]!r}; give it once")
        kafka[name] = value


def _set_dotted(raw: dict[str, Any], key: str, value: str) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, f"{part!r} must be a mapping")
        node = child
    node[leaf] = value


def postgres_dsn(pg: PostgresSettings, *, host: str, port: int) -> str:
    """A libpq URI from discrete settings (the password percent-encoded)."""
    auth = quote(pg.user, safe="")
    if pg.password:
        auth += ":" + quote(pg.password, safe="")
    return f"postgresql://{auth}@{host}:{port}/{quote(pg.database, safe='')}"
