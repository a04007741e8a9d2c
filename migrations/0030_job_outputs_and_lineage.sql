-- A scoring job appends each chunk to its CSV or NDJSON output and to its rejects file (both
-- under a `.partial` name until the job is done) instead of writing part files joined at the
-- end. The bytes each file held at a chunk's commit are committed with it: a resumed job
-- writes its next chunk at that length, cutting off what a killed worker wrote past it.
-- A Parquet output keeps its part files (its footer is written only at close); its rejects
-- file is appended like the others.
ALTER TABLE score_jobs ADD COLUMN output_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE score_jobs ADD COLUMN rejects_bytes bigint NOT NULL DEFAULT 0;
-- A job that ran chunks before this version wrote them as part files, which the new code does
-- not read: -1 makes its resumed run fail ("submit it again") instead of writing its next chunk
-- at the start of an empty file.
UPDATE score_jobs SET output_bytes = -1, rejects_bytes = -1
    WHERE status IN ('queued', 'running') AND chunks_done > 0;

-- Lineage of batch scoring (issue 21): score jobs write no `predictions`, so the lineage read
-- (service/inference/records.py) would never show that a model version scored a batch. One row
-- per job and (row's variant, variant whose model answered, model, provider), upserted in the
-- transaction that commits each chunk: its rows count exactly the committed chunks' scored rows,
-- its times the first and the last of those commits. The registry version is the one the job
-- resolved and ran (NULL for a model file).
CREATE TABLE score_job_models (
    job_id           uuid NOT NULL REFERENCES score_jobs (job_id),
    experiment_key   text NOT NULL,
    variant_key      text NOT NULL,
    served_by        text NOT NULL,
    model_sha256     text NOT NULL,
    provider         text NOT NULL,
    registry_name    text,
    registry_version text,
    first_scored_at  timestamptz NOT NULL,
    last_scored_at   timestamptz NOT NULL,
    rows_scored      bigint NOT NULL,
    PRIMARY KEY (job_id, variant_key, served_by, model_sha256, provider)
);
CREATE INDEX score_job_models_experiment ON score_job_models (experiment_key);
