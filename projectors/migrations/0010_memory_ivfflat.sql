-- The memories' vector index becomes IVFFlat over the embeddings as halfvec (16-bit
-- floats, cosine distance): an insert only finds its nearest list centroid, where an
-- HNSW insert walks a graph that grows with the table (its CPU per vector was most of a
-- projector's PostgreSQL time at a million events), and scanning the lists nearest to a
-- query keeps recall@10 above 0.95 at a million memories (`aosk bench memory`,
-- docs/benchmarks.md "Memory index", docs/projections.md "Memory recall and its index").
-- Recall takes 4x k candidates from it and orders them by the full vectors' exact cosine
-- distance. The lists follow aosk.projectors.memory_index.lists_for: one below 10,000
-- memories (an exact scan), one per 1,000 up to a million, sqrt(rows) past that; the
-- projectors build it again as the table doubles.
--
-- Only where the HNSW over halfvecs of 0009 exists: a schema without it (a replay's
-- shadow whose indexes are deferred to the end of the rebuild, an index of another kind
-- chosen by memory.index, or none on purpose) is left as it is.
do $$
declare
    n bigint;
    lists int;
begin
    if exists (select 1 from pg_indexes where schemaname = current_schema()
               and indexname = 'memories_embedding_halfvec') then
        select count(*) into n from memories where embedding is not null;
        lists := case when n < 10000 then 1
                      when n <= 1000000 then n / 1000
                      else floor(sqrt(n)) end;
        drop index memories_embedding_halfvec;
        execute format('create index memories_embedding_ivfflat on memories '
                       'using ivfflat ((embedding::halfvec({dimension})) halfvec_cosine_ops) with (lists = %s)', lists);
    end if;
end
$$;
