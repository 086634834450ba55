-- agent_state holds one row per agent key, rewritten for every agent a batch touches:
-- the state column (the fold's canonical JSON, kilobytes to ~100 kB, mostly out of line in
-- the TOAST table) is replaced as a whole, so every batch leaves a dead version of each
-- touched agent's state behind until VACUUM reclaims it. With PostgreSQL's defaults
-- (autovacuum when 20% of the rows are dead, throttled) the table was ~3.6x its live rows.
--
-- fillfactor: room on each heap page for the next version of its rows, so an update that
-- leaves tenant_id and status alone is a HOT update (no index entries, and the old
-- version is pruned from the page without VACUUM).
-- autovacuum: on the table and on its TOAST table, as soon as a few hundred versions are
-- dead whatever the table's size, unthrottled (the table is small; its TOAST table is
-- where the dead versions are).
alter table agent_state set (
    fillfactor = 50,
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
