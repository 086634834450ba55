-- Why a journal partition is not projected any further (operational, not part of a
-- digest): written by the projector that stopped it, cleared when the partition goes on.
-- A stop whose offset is below next_offset is stale (a later projector got past it).
alter table projector_offsets
    add column stopped_offset bigint,
    add column stop_reason    text,
    add column stop_message   text,
    add column stopped_at     timestamptz;

-- projector_lag as before (lag as of each partition's last commit; `aosk db status` asks
-- the broker for the true end offsets), plus the stop, if any.
create or replace view projector_lag as
select partition,
       next_offset,
       high_watermark,
       greatest(coalesce(high_watermark, next_offset) - next_offset, 0) as lag_records,
       last_record_at,
       committed_at,
       now() - committed_at as time_since_commit,
       owner,
       case when stopped_offset >= next_offset then stopped_offset end as stopped_offset,
       case when stopped_offset >= next_offset then stop_reason end as stop_reason,
       case when stopped_offset >= next_offset then stop_message end as stop_message
from projector_offsets;
