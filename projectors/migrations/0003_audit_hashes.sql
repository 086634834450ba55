-- What `aosk audit verify` checks beyond the audit chain (docs/projections.md, "Audit
-- verify"). None of these columns is covered by the chain's hash (its formula and the
-- canonical verdict are unchanged, so chains written before this migration still verify);
-- each records a hash that verify recomputes from the rows people query.

-- sha256 of the canonical state after this record, on the rows whose resulting state the
-- projection stored: the last record of an agent in a batch (its agent_state row then)
-- and every record that made a checkpoint. Which rows besides checkpoints carry one
-- depends on batch boundaries, so `aosk db digest` leaves this column out.
alter table audit_log add column state_hash bytea;
-- The reason of the checkpoint this record made (checkpoints.reason); null: none.
alter table audit_log add column checkpoint text;
-- The content hashes of the memory rows this record wrote (stored, paged out) or made a
-- tombstone of (forgotten); null: none.
alter table audit_log add column memory_hashes bytea[];
-- aosk.projectors.rows.memory_hash of the row's content (or of its tombstone).
alter table memories add column content_hash bytea;

-- Checkpoints `aosk db thin-checkpoints` deleted, so verify tells them from removed ones.
-- Operational (an operator's action, not in a digest): a rebuild recreates every checkpoint.
create table checkpoints_thinned (
    agent_id text not null,
    seq      bigint not null,
    primary key (agent_id, seq)
);

-- Per journal partition, the first offset projected with the columns above (rows before
-- it were written by an older AOSK and carry none): {"partition": offset, ...}.
insert into projection_meta (key, value)
select 'audit_hashes_from', coalesce((select json_object_agg(partition, next_offset)::text from projector_offsets), '{}')
on conflict (key) do nothing;
