-- One row per journal record, the event's body included: what history, the SSE stream
-- and point-in-time reads need without opening a Kafka consumer. Like audit_log, every
-- record has a row under the key it folds into (aosk.kernel.fold_key, stored as
-- aosk.projectors.rows.storage_key): an agent's own records under its id; partition
-- markers and misrouted records under the partition's pseudo-agent (~pN); an undecodable
-- record under its key with event_type null and payload {"error": ...}. Every column is
-- a function of the journal (broker_time is the record's LogAppendTime), so a rebuild
-- gives identical rows.
create table events (
    agent_id          text not null,
    tenant_id         text,
    seq               bigint not null,
    journal_partition int not null,
    journal_offset    bigint not null,
    event_id          text,
    event_type        text,
    -- the event's own fields (aosk.kernel.event_to_plain without "type": bytes as hex)
    payload           jsonb not null,
    verdict           text not null,
    reason            text not null,
    broker_time       timestamptz not null,
    primary key (journal_partition, journal_offset)
);
-- An agent's records by seq (history pages) and after an offset (the stream, time travel).
create unique index events_agent_seq on events (agent_id, seq);
create index events_agent_offset on events (agent_id, journal_offset);
