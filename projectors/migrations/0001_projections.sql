-- Projection tables. Applied with search_path set to the projection schema (default
-- aosk), so every object below lives in that schema and moves with it when `aosk replay`
-- swaps a rebuilt shadow schema in. {dimension} is the cluster's embedding dimension.
--
-- Determinism: every column except the ones marked "operational" is a function of the
-- journal alone (times are the records' LogAppendTime, never now()), so a rebuild from
-- offset 0 gives identical rows.

-- Settings of this projection (checkpoint policy, the journal it follows).
create table projection_meta (
    key   text primary key,
    value text not null
);

-- Where each journal partition's projection stands: advanced in the same transaction as
-- the rows, with a compare-and-set on next_offset (the fencing token).
create table projector_offsets (
    partition       int primary key,
    next_offset     bigint not null default 0 check (next_offset >= 0),
    -- operational (not part of a digest): what the last committing projector saw
    high_watermark  bigint,
    last_record_at  timestamptz,
    committed_at    timestamptz,
    owner           text
);

-- The full state of every agent key (enough to resume folding) plus queryable columns.
create table agent_state (
    agent_id              text primary key,
    journal_partition     int not null,
    tenant_id             text,
    parent_id             text,
    name                  text,
    status                text not null,
    priority              int,
    fold_version          int not null,
    seq                   bigint not null,
    last_offset           bigint not null,
    state_hash            bytea not null,
    audit_head            bytea not null,
    tokens_used           bigint not null,
    tool_calls_used       bigint not null,
    steps_used            bigint not null,
    max_tokens            bigint,
    max_tool_calls        bigint,
    max_steps             bigint,
    context_window_tokens bigint,
    tokens_left           bigint not null,
    tool_calls_left       bigint not null,
    steps_left            bigint not null,
    window_entries        int not null,
    window_tokens         bigint not null,
    inbox_messages        int not null,
    open_calls            int not null,
    capabilities          text[] not null,
    memories_stored       bigint not null,
    memories_forgotten    bigint not null,
    messages_sent         bigint not null,
    messages_received     bigint not null,
    messages_bounced      bigint not null,
    children_requested    bigint not null,
    accepted              bigint not null,
    rejected              bigint not null,
    duplicates            bigint not null,
    suspend_reason        text,
    waiting_on            text,
    exit_code             int,
    exit_reason           text,
    error                 text,
    spawned_at            timestamptz,
    updated_at            timestamptz not null,
    state                 bytea not null check (octet_length(state) <= 1048576)
);
create index agent_state_tenant_status on agent_state (tenant_id, status);

-- One row per journal record, duplicates and undecodable records included, hash-chained
-- per agent: hash = sha256(prev_hash || seq (8 bytes, big-endian) || value_hash ||
-- canonical verdict), genesis 32 zero bytes. The canonical verdict (the kernel's
-- canonical_verdict_bytes) leaves out the message and the state hash; agent_state and
-- checkpoints carry state hashes.
create table audit_log (
    journal_partition int not null,
    journal_offset    bigint not null,
    agent_id          text not null,
    seq               bigint not null,
    recorded_at       timestamptz not null,
    tenant_id         text,
    event_id          text,
    event_type        text,
    subject           text,
    kind              text not null,
    reason            text not null,
    status            text not null,
    message           text not null,
    fold_version      int not null,
    checkpoint_due    boolean not null,
    derived_ids       text[] not null,
    paged_out_ids     text[] not null,
    value_hash        bytea not null,
    hash              bytea not null,
    -- true when PostgreSQL refused this record's projection rows (see docs/projections.md)
    refused           boolean not null default false,
    refusal           text,
    -- the exact canonical verdict, kept only when a column had to be made storable
    verdict_bytes     bytea,
    primary key (journal_partition, journal_offset)
);
create unique index audit_log_agent_seq on audit_log (agent_id, seq);

-- The state at (partition, offset): every N records of an agent, on suspend or a final
-- status, and on CheckpointRequested. Bounded by the fold's state bound.
create table checkpoints (
    agent_id          text not null,
    seq               bigint not null,
    journal_partition int not null,
    journal_offset    bigint not null,
    taken_at          timestamptz not null,
    reason            text not null,
    fold_version      int not null,
    state_hash        bytea not null,
    state             bytea not null check (octet_length(state) <= 1048576),
    primary key (agent_id, seq)
);

-- Long-term memories and paged-out context entries, scoped by tenant and agent.
create table memories (
    agent_id          text not null,
    memory_id         text not null,
    tenant_id         text not null,
    source            text not null check (source in ('stored', 'paged_out')),
    role              text,
    text              text,
    metadata          jsonb not null default '{}',
    importance        double precision,
    embedding         vector({dimension}),
    journal_partition int not null,
    journal_offset    bigint not null,
    seq               bigint not null,
    stored_at         timestamptz not null,
    embedded_at       timestamptz,
    embedded_offset   bigint,
    forgotten         boolean not null default false,
    forgotten_at      timestamptz,
    forgotten_offset  bigint,
    primary key (agent_id, memory_id),
    check (not forgotten or (text is null and embedding is null))
);
create index memories_embedding_hnsw on memories
    using hnsw (embedding vector_cosine_ops) with (m = 16, ef_construction = 64);
create index memories_tenant on memories (tenant_id);
