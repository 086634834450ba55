-- The memories' vector index becomes an HNSW graph over binary-quantized embeddings
-- (one bit per dimension, Hamming distance): recall takes 10x k candidates from it and
-- orders them by the full vectors' exact cosine distance (aosk.reads.memory). Measured
-- against the HNSW over the full vector(d) it replaces, in the same runs, by
-- `aosk bench memory` (docs/benchmarks.md "Memory index"): a fraction of the insert CPU,
-- the build time and the size, with recall@10 >= 0.95 with and without filters.
-- memory.index (hnsw_bq | hnsw | halfvec) selects another kind: `aosk db migrate`, the
-- projectors and `aosk replay` replace this index by that one (aosk.projectors.memory_index).
--
-- Only where the index of 0001 exists: a schema without it (a replay's shadow whose
-- indexes are deferred to the end of the rebuild, or dropped on purpose) keeps none.
-- Building it reads every embedded memory (seconds per 100,000 memories with the
-- server's maintenance_work_mem; it runs inside the migration's transaction).
do $$
begin
    if exists (select 1 from pg_indexes where schemaname = current_schema()
               and indexname = 'memories_embedding_hnsw') then
        drop index memories_embedding_hnsw;
        create index memories_embedding_bq on memories
            using hnsw ((binary_quantize(embedding)::bit({dimension})) bit_hamming_ops)
            with (m = 16, ef_construction = 64);
    end if;
end
$$;
