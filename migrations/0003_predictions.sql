-- Every /v1/predict answer and every shadow run: which model answered, where, how fast,
-- and whether the variant's own model failed (a guardrail signal, counted per variant).

CREATE TABLE predictions (
    prediction_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_key text NOT NULL,
    unit_id        text NOT NULL,
    variant_key    text NOT NULL,  -- the assigned variant (a shadow row: the shadow variant)
    reason         text NOT NULL,  -- the assignment reason; 'shadow' for shadow runs
    in_experiment  boolean NOT NULL,
    served_by      text NOT NULL,  -- the variant whose model answered (the fallback's on failure)
    model_sha256   text NOT NULL,
    provider       text NOT NULL,
    batch_rows     integer NOT NULL,
    latency_ms     real NOT NULL,
    fallback       boolean NOT NULL,
    failure        text,           -- load-error | error | non-finite | timeout | variant-unavailable
    cached         boolean NOT NULL,
    shadow         boolean NOT NULL,
    agreement      real,           -- shadow rows: share of rows whose decision matches the served
    max_abs_diff   real,           -- shadow rows: largest output difference from the served
    predicted_at   timestamptz NOT NULL
);
CREATE INDEX predictions_by_variant ON predictions (experiment_key, variant_key, predicted_at);
