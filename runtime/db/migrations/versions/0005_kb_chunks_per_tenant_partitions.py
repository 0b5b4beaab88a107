"""Knowledge base: ``kb_chunks`` LIST-partitioned by tenant, one partition (and HNSW) per tenant.

Why: one HNSW graph shared by all tenants, filtered to one tenant with ``hnsw.iterative_scan``,
measured here at 100k chunks over 10 tenants: recall@5 0.92 at ef_search 200 (vector p99 ~15 ms),
0.96 at 400 (p99 ~22 ms). The graph walks mostly other tenants' vectors. With a partition per
tenant the planner prunes to the tenant's own table and its own HNSW graph, so the search walks
only that tenant's vectors (DESIGN.md, Storage: LIST partitions measured p99 4.6 ms, recall 1.0).
It also makes a tenant's chunks physically separate, and deleting a tenant drops its partition
instead of deleting rows one by one.

- Partitions are created by the database, not by application code: an AFTER INSERT trigger on
  ``tenants`` creates ``kb_chunks_t<uuid hex>``; a BEFORE DELETE trigger drops it. Every code path
  that creates a tenant (API, CLI, tests, SQL by hand) therefore gets one. Creating one takes only
  SHARE UPDATE EXCLUSIVE on ``kb_chunks`` (LIKE + ATTACH), so searches and ingestion go on;
  dropping one takes ACCESS EXCLUSIVE, bounded by a 5 s lock_timeout.
- Still no btree led by ``tenant_id`` (the primary key is ``(id, tenant_id)``); partition pruning
  does the tenant narrowing. ``hnsw.iterative_scan`` stays on (harmless within one tenant).
- Chunk ids keep their values (a sequence continues after the highest); messages cite them.
- HNSW ``ef_construction`` 128 (was 64): per-tenant graphs are small, and the better graph
  measured recall@5 0.987-0.991 vs 0.977-0.983 at ef_search 100-200 (100k chunks, 10 tenants).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    ALTER TABLE kb_chunks RENAME TO kb_chunks_unpartitioned;
    ALTER INDEX kb_chunks_document_idx RENAME TO kb_chunks_unpartitioned_document_idx;
    ALTER INDEX kb_chunks_embedding_hnsw RENAME TO kb_chunks_unpartitioned_embedding_hnsw;
    ALTER INDEX kb_chunks_tsv_gin RENAME TO kb_chunks_unpartitioned_tsv_gin;
    ALTER INDEX kb_chunks_pkey RENAME TO kb_chunks_unpartitioned_pkey;

    CREATE SEQUENCE kb_chunk_ids AS bigint;
    CREATE TABLE kb_chunks (
        id           bigint NOT NULL DEFAULT nextval('kb_chunk_ids'),
        tenant_id    uuid NOT NULL,
        document_id  uuid NOT NULL,
        ord          integer NOT NULL,                  -- position in the document, from 0
        text         text NOT NULL,
        title        text NOT NULL DEFAULT '',
        section      text NOT NULL DEFAULT '',
        page         integer,                           -- 1-based PDF page, NULL otherwise
        token_count  integer NOT NULL,
        embedding    vector(384) NOT NULL,
        tsv          tsvector GENERATED ALWAYS AS (
                         setweight(to_tsvector('english', title || ' ' || section), 'B')
                         || to_tsvector('english', text)
                         || array_to_tsvector(ARRAY['t' || replace(tenant_id::text, '-', '')])
                     ) STORED,
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (id, tenant_id),
        FOREIGN KEY (document_id, tenant_id)
            REFERENCES kb_documents (id, tenant_id) ON DELETE CASCADE
    ) PARTITION BY LIST (tenant_id);
    ALTER SEQUENCE kb_chunk_ids OWNED BY kb_chunks.id;
    -- Inline vectors: a 384-d vector (1.5 kB) plus a chunk's text passes the TOAST threshold,
    -- and the vector would be moved out of line; an exact scan (what the planner picks for a
    -- small knowledge base) then fetches every vector from the TOAST table.
    -- Partitions also keep rows up to ~4 kB whole (toast_tuple_target), so a chunk's text and
    -- tsvector stay beside its vector: the full-text leg ranks up to 400 rows per query.
    ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE PLAIN;
    CREATE INDEX kb_chunks_document_idx ON kb_chunks (document_id, ord);
    CREATE INDEX kb_chunks_embedding_hnsw ON kb_chunks
        USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128);
    CREATE INDEX kb_chunks_tsv_gin ON kb_chunks USING gin (tsv);

    CREATE FUNCTION kb_chunks_partition(tenant uuid) RETURNS text
        LANGUAGE sql IMMUTABLE AS $$ SELECT 'kb_chunks_t' || replace(tenant::text, '-', '') $$;

    -- CREATE TABLE ... PARTITION OF would hold ACCESS EXCLUSIVE on kb_chunks (every search
    -- queues behind it, and behind whatever it waits for); a table made LIKE the parent (with
    -- its indexes) and then ATTACHed takes SHARE UPDATE EXCLUSIVE, so reads and writes go on.
    CREATE FUNCTION kb_chunks_add_partition(tenant uuid) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF to_regclass(kb_chunks_partition(tenant)) IS NOT NULL THEN
            RETURN;
        END IF;
        EXECUTE format('CREATE TABLE %I (LIKE kb_chunks INCLUDING DEFAULTS INCLUDING GENERATED '
                       'INCLUDING INDEXES INCLUDING CONSTRAINTS INCLUDING STORAGE) '
                       'WITH (toast_tuple_target = 4080)', kb_chunks_partition(tenant));
        EXECUTE format('ALTER TABLE kb_chunks ATTACH PARTITION %I FOR VALUES IN (%L)',
                       kb_chunks_partition(tenant), tenant);
    END $$;
    CREATE FUNCTION tenants_create_kb_partition() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM kb_chunks_add_partition(NEW.id);
        RETURN NULL;
    END $$;
    -- Dropping a partition needs ACCESS EXCLUSIVE on kb_chunks: wait at most 5 s for it (then
    -- the tenant's deletion fails and can be retried) rather than stall every search.
    CREATE FUNCTION tenants_drop_kb_partition() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        previous text := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', '5s', true);
        EXECUTE format('DROP TABLE IF EXISTS %I', kb_chunks_partition(OLD.id));
        PERFORM set_config('lock_timeout', previous, true);
        RETURN OLD;
    END $$;
    CREATE TRIGGER tenants_kb_partition_create AFTER INSERT ON tenants
        FOR EACH ROW EXECUTE FUNCTION tenants_create_kb_partition();
    CREATE TRIGGER tenants_kb_partition_drop BEFORE DELETE ON tenants
        FOR EACH ROW EXECUTE FUNCTION tenants_drop_kb_partition();

    SELECT kb_chunks_add_partition(id) FROM tenants;

    INSERT INTO kb_chunks (id, tenant_id, document_id, ord, text, title, section, page,
                           token_count, embedding, created_at)
    SELECT id, tenant_id, document_id, ord, text, title, section, page, token_count, embedding,
           created_at
    FROM kb_chunks_unpartitioned;
    SELECT setval('kb_chunk_ids', coalesce((SELECT max(id) FROM kb_chunks), 0) + 1, false);
    DROP TABLE kb_chunks_unpartitioned;
    """)


def downgrade() -> None:
    op.execute("""
    DROP TRIGGER IF EXISTS tenants_kb_partition_create ON tenants;
    DROP TRIGGER IF EXISTS tenants_kb_partition_drop ON tenants;
    DROP FUNCTION IF EXISTS tenants_create_kb_partition(), tenants_drop_kb_partition(),
        kb_chunks_add_partition(uuid);
    ALTER TABLE kb_chunks RENAME TO kb_chunks_partitioned;
    ALTER INDEX kb_chunks_document_idx RENAME TO kb_chunks_partitioned_document_idx;
    ALTER INDEX kb_chunks_embedding_hnsw RENAME TO kb_chunks_partitioned_embedding_hnsw;
    ALTER INDEX kb_chunks_tsv_gin RENAME TO kb_chunks_partitioned_tsv_gin;
    ALTER INDEX kb_chunks_pkey RENAME TO kb_chunks_partitioned_pkey;
    CREATE TABLE kb_chunks (
        id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant_id    uuid NOT NULL,
        document_id  uuid NOT NULL,
        ord          integer NOT NULL,
        text         text NOT NULL,
        title        text NOT NULL DEFAULT '',
        section      text NOT NULL DEFAULT '',
        page         integer,
        token_count  integer NOT NULL,
        embedding    vector(384) NOT NULL,
        tsv          tsvector GENERATED ALWAYS AS (
                         setweight(to_tsvector('english', title || ' ' || section), 'B')
                         || to_tsvector('english', text)
                         || array_to_tsvector(ARRAY['t' || replace(tenant_id::text, '-', '')])
                     ) STORED,
        created_at   timestamptz NOT NULL DEFAULT now(),
        FOREIGN KEY (document_id, tenant_id)
            REFERENCES kb_documents (id, tenant_id) ON DELETE CASCADE
    );
    INSERT INTO kb_chunks (id, tenant_id, document_id, ord, text, title, section, page,
                           token_count, embedding, created_at)
    SELECT id, tenant_id, document_id, ord, text, title, section, page, token_count, embedding,
           created_at
    FROM kb_chunks_partitioned;
    SELECT setval(pg_get_serial_sequence('kb_chunks', 'id'),
                  coalesce((SELECT max(id) FROM kb_chunks), 0) + 1, false);
    DROP TABLE kb_chunks_partitioned;
    DROP FUNCTION IF EXISTS kb_chunks_partition(uuid);
    CREATE INDEX kb_chunks_document_idx ON kb_chunks (document_id, ord);
    CREATE INDEX kb_chunks_embedding_hnsw ON kb_chunks
        USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
    CREATE INDEX kb_chunks_tsv_gin ON kb_chunks USING gin (tsv);
    """)
