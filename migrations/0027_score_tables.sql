-- A scoring job may write its scores to a PostgreSQL table instead of a file (service/jobs/tables.py).
-- Exactly one of `output_path` and `output_table` is set; `output_format` is 'table' for the latter.
-- The table's rows of a chunk are inserted in the transaction that commits the chunk's progress.

ALTER TABLE score_jobs ALTER COLUMN output_path DROP NOT NULL;
ALTER TABLE score_jobs ADD COLUMN output_table text;
ALTER TABLE score_jobs ADD CONSTRAINT score_jobs_one_output
    CHECK ((output_path IS NULL) <> (output_table IS NULL));
