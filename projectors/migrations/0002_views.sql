-- Views for the questions operators ask (docs/queries.md has example SQL). They live in
-- the projection schema, so they move with it when a rebuilt schema is swapped in.

create view agents_by_status as
select tenant_id, status, count(*) as agents
from agent_state
where status <> 'NONE'
group by tenant_id, status;

create view token_spend_per_tenant as
select tenant_id,
       count(*)             as agents,
       sum(tokens_used)     as tokens_used,
       sum(tool_calls_used) as tool_calls_used,
       sum(steps_used)      as steps_used
from agent_state
where tenant_id is not null
group by tenant_id;

create view token_spend_per_agent as
select tenant_id, agent_id, name, status,
       tokens_used, max_tokens, tokens_left,
       tool_calls_used, max_tool_calls, tool_calls_left,
       steps_used, max_steps, steps_left,
       updated_at
from agent_state
where tenant_id is not null;

create view denied_tool_calls as
select tenant_id, agent_id, seq, recorded_at, subject as tool, event_id,
       journal_partition, journal_offset, message
from audit_log
where event_type = 'ToolCallRequested' and reason = 'capability_denied';

-- The last 50 audit rows of each agent; filter on agent_id (pushed into the window).
create view recent_audit as
select agent_id, seq, recorded_at, event_type, subject, kind, reason, status, message,
       tenant_id, event_id, journal_partition, journal_offset, refused, recency
from (
    select a.*, row_number() over (partition by agent_id order by seq desc) as recency
    from audit_log a
) ranked
where recency <= 50;

-- Records behind, per journal partition, as of each partition's last commit; a dead
-- projector shows as a growing time_since_commit (high_watermark is what it last saw).
create view projector_lag as
select partition,
       next_offset,
       high_watermark,
       greatest(coalesce(high_watermark, next_offset) - next_offset, 0) as lag_records,
       last_record_at,
       committed_at,
       now() - committed_at as time_since_commit,
       owner
from projector_offsets;

-- Rejections and duplicates by reason (what the fold refused, and why).
create view verdicts_by_reason as
select kind, reason, count(*) as records
from audit_log
group by kind, reason;

-- Rows PostgreSQL refused (the fold's verdict is kept; see docs/projections.md).
create view refused_records as
select journal_partition, journal_offset, agent_id, seq, recorded_at, event_type, refusal
from audit_log
where refused;
