-- The memories' vector index becomes an HNSW graph over the embeddings as halfvec (16-bit
-- floats, cosine distance): recall takes 4x k candidates from it and orders them by the
-- full vectors' exact cosine distance (aosk.reads.memory). Measured against the HNSW over
-- the full vector(d) it replaces, in the same runs, by `aosk bench memory`
-- (docs/benchmarks.md "Memory index", docs/projections.md "Memory recall and its index"):
-- 0.57x the size, recall@10 as high or higher with and without filters. The binary-quantized
-- index was measured too and is selectable, but its recall on 384-d embeddings is far lower.
-- memory.index (halfvec | hnsw | hnsw_bq) selects another kind: `aosk db migrate`, the
-- projectors and `aosk replay` replace this index by that one (aosk.projectors.memory_index).
--
-- Only where the index of 0001 exists: a schema without it (a replay's shadow whose
-- indexes are deferred to the end of the rebuild, or dropped on purpose) keeps none.
-- Building it reads every embedded memory inside the migration's transaction (about a
-- minute per 100,000 memories on 2 busy cores).
do $$
begin
    if exists (select 1 from pg_indexes where schemaname = current_schema()
               and indexname = 'memories_embedding_hnsw') then
        drop index memories_embedding_hnsw;
        create index memories_embedding_halfvec on memories
            using hnsw ((embedding::halfvec({dimension})) halfvec_cosine_ops)
            with (m = 16, ef_construction = 64);
    end if;
end
$$;
