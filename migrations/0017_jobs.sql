-- Batch scoring jobs (service/jobs/): one row per job, its progress committed with each chunk.
-- A worker that dies mid-job leaves `chunks_done`: the chunk files up to it are final, the
-- job resumes at the next one, so no row is scored twice in the output and none is missing.

CREATE TABLE score_jobs (
    job_id         uuid PRIMARY KEY,
    experiment_key text NOT NULL,
    variant_key    text,              -- one explicit variant; NULL: each row assigned as /v1/assign
    input_path     text NOT NULL,
    input_format   text NOT NULL,     -- csv | ndjson | parquet
    output_path    text NOT NULL,
    output_format  text NOT NULL,
    rejects_path   text NOT NULL,
    log_exposures  boolean NOT NULL DEFAULT false,
    chunk_rows     integer NOT NULL,
    status         text NOT NULL DEFAULT 'queued',  -- queued | running | done | cancelled | failed
    rows_total     bigint,            -- estimated from the file before the first chunk
    rows_done      bigint NOT NULL DEFAULT 0,
    rows_rejected  bigint NOT NULL DEFAULT 0,
    chunks_done    integer NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 0,
    error          text,
    created_by     text NOT NULL,
    request_id     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX score_jobs_active ON score_jobs (updated_at) WHERE status IN ('queued', 'running');

-- A job's completion is announced like a decision: a signed delivery per experiment webhook.
ALTER TABLE webhook_deliveries ALTER COLUMN decision_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ADD COLUMN job_id uuid REFERENCES score_jobs (job_id);
