-- agent_state holds one row per agent key, rewritten for every agent a batch touches:
-- the state column (the fold's canonical JSON, kilobytes to ~100 kB, mostly out of line in
-- the TOAST table) is replaced as a whole, so every batch leaves a dead version of each
-- touched agent's state behind until VACUUM reclaims it. With PostgreSQL's defaults
-- (autovacuum when 20% of the rows are dead, throttled) the table was ~3.6x its live rows.
--
-- The heap keeps the default fill factor: the states are in TOAST, the heap rows are small
-- and HOT updates happen where a page has room; fillfactor = 50 was measured and made the
-- table larger (aosk bench growth, docs/benchmarks.md).
-- autovacuum: on the table and on its TOAST table, as soon as a few hundred versions are
-- dead whatever the table's size, unthrottled (the table is small; its TOAST table is
-- where the dead versions are).
alter table agent_state set (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 200,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_cost_delay = 0,
    toast.autovacuum_vacuum_scale_factor = 0,
    toast.autovacuum_vacuum_threshold = 500,
    toast.autovacuum_vacuum_cost_delay = 0
);

-- lz4 where the server is built with it (faster than pglz and it compresses the state
-- JSON at least as well); otherwise the server's default (pglz). Only values written
-- from now on use it; PostgreSQL reads both, and the bytes read back are the same.
do $$
begin
    if exists (select 1 from pg_settings where name = 'default_toast_compression' and 'lz4' = any (enumvals)) then
        alter table agent_state alter column state set compression lz4;
        alter table checkpoints alter column state set compression lz4;
    end if;
end
$$;
