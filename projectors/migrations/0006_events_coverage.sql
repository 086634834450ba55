-- Per journal partition, the offset from which `events` has a row for every record.
-- A projection built before migration 0005 has an audit_log row for each earlier record
-- but no events row (the bodies were only in Kafka then): the readers of events
-- (aosk.reads.coverage) refuse a read that needs a row below complete_from instead of
-- listing or folding a partial history. No row for a partition means complete from 0.
--
-- Filled from what is there: per partition, one past the highest audit_log offset that
-- has no events row (0 when none is missing). So it is right whether 0005 ran in the
-- same upgrade (events empty: every projected record is missing) or earlier (only the
-- records projected before it are). Projectors write an events row with every audit row,
-- so nothing moves complete_from up afterwards; a fresh schema (a new database, or the
-- shadow `aosk replay` builds and swaps in) has no projector_offsets rows yet, hence an
-- empty table: complete from 0.
--
-- Not digested by `aosk db digest`: on an upgraded database it records when the upgrade
-- happened, not a function of the journal.
create table events_coverage (
    partition     int primary key,
    complete_from bigint not null check (complete_from >= 0)
);

insert into events_coverage (partition, complete_from)
select o.partition, coalesce(m.last_missing + 1, 0)
from projector_offsets o
left join (
    select a.journal_partition, max(a.journal_offset) as last_missing
    from audit_log a
    where not exists (select 1 from events e
                      where e.journal_partition = a.journal_partition and e.journal_offset = a.journal_offset)
    group by a.journal_partition
) m on m.journal_partition = o.partition;
