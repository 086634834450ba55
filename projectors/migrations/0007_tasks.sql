-- One row per task an agent was given (fold version 4: TaskSubmitted ... TaskCompleted /
-- TaskFailed / TaskCancelled), written by the projector from the fold's state before and
-- after each accepted record (aosk.projectors.task_rows), so the table follows the fold:
-- status, counters and times change exactly when the folded task does. Every column is a
-- function of the journal (times are LogAppendTime), so a rebuild gives identical rows.
--
-- status: pending (queued behind the running task), running (the agent's head task once
-- started; a task submitted to an empty queue starts at once), succeeded, failed,
-- cancelled (TaskCancelled, or the agent killed or terminated: the fold ends its tasks).
-- reason / message: why a task did not succeed (TaskFailed's reason and message;
-- `cancelled` and TaskCancelled's reason; `agent_terminated` / `agent_error` and the
-- event that ended the agent).
-- A task id the fold has forgotten (more than 32 tasks ago) may be submitted again to the
-- same agent: its row is then replaced, as the fold's task is.
create table tasks (
    agent_id          text not null,
    task_id           text not null,
    tenant_id         text,
    status            text not null check (status in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    input             text,
    metadata          jsonb,
    output            text,
    reason            text,
    message           text,
    submitted_at      timestamptz,
    started_at        timestamptz,
    ended_at          timestamptz,
    turns             int,
    model_calls       int,
    tool_calls        int,
    steps             int,
    tokens            bigint,
    journal_partition int,
    journal_offset    bigint,
    submitted_seq     bigint,
    updated_at        timestamptz not null,
    primary key (agent_id, task_id)
);
-- The API's lookups: a task by id within a tenant, a tenant's tasks by status, an agent's.
create index tasks_tenant_task on tasks (tenant_id, task_id);
create index tasks_tenant_status on tasks (tenant_id, status, task_id);

-- For operators: tasks by tenant and status, with tokens and latency (submitted to ended,
-- broker time) per task; latency is null while no task of the group has ended.
create view task_stats as
select tenant_id,
       status,
       count(*)                                                         as tasks,
       coalesce(sum(tokens), 0)                                          as tokens,
       avg(tokens)::float8                                               as tokens_per_task,
       avg(model_calls)::float8                                          as model_calls_per_task,
       avg(tool_calls)::float8                                           as tool_calls_per_task,
       avg(extract(epoch from ended_at - submitted_at))::float8          as latency_avg_s,
       percentile_cont(0.5) within group (
           order by extract(epoch from ended_at - submitted_at)::float8) as latency_p50_s,
       percentile_cont(0.95) within group (
           order by extract(epoch from ended_at - submitted_at)::float8) as latency_p95_s,
       max(extract(epoch from ended_at - submitted_at))::float8          as latency_max_s
from tasks
group by tenant_id, status;
