-- Model quality while labels are late (issue 17): outcome sums by exposure cohort for
-- metrics with an outcome window, and per-hour distribution sketches of served models.

-- Sufficient statistics of a windowed metric per (experiment, seed, variant, metric, day of
-- the unit's first exposure). Summing the cohorts whose window (plus the maturity delay) has
-- closed gives the sums over mature units only; exposure_counts gives their number.
CREATE TABLE metric_cohort_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    variant_key    text NOT NULL,
    metric         text NOT NULL,
    cohort         date NOT NULL,
    sum_y          double precision NOT NULL DEFAULT 0,
    sum_y2         double precision NOT NULL DEFAULT 0,
    sum_x          double precision NOT NULL DEFAULT 0,
    sum_x2         double precision NOT NULL DEFAULT 0,
    sum_xy         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, variant_key, metric, cohort)
);

-- One fixed-bin histogram per (experiment, variant, model, hour, feature): a model output
-- ('output:<name>[<column>]') or input column ('input:<name>[<column>]'). The bin edges are
-- the model's, set once from its reference, and kept in the row so it reads on its own.
-- At most 32 bins and 64 features per model: a row is about 1 KiB with its index (1,037 B
-- measured by benchmarks/drift.py), so a model-hour of one variant is bounded (at most about
-- 66 KiB; 21 KiB for the 20-column demo model) whatever the traffic.
CREATE TABLE model_sketches (
    experiment_key text NOT NULL,
    variant_key    text NOT NULL,
    model_sha256   text NOT NULL,
    hour           timestamptz NOT NULL,
    feature        text NOT NULL,
    edges          double precision[] NOT NULL,
    counts         bigint[] NOT NULL,
    below          bigint NOT NULL DEFAULT 0,
    above          bigint NOT NULL DEFAULT 0,
    invalid        bigint NOT NULL DEFAULT 0,
    n              bigint NOT NULL DEFAULT 0,
    sum_value      double precision NOT NULL DEFAULT 0,
    sum_square     double precision NOT NULL DEFAULT 0,
    -- Experiment then hour: the drift guardrails read an experiment's last few hours.
    PRIMARY KEY (experiment_key, hour, variant_key, model_sha256, feature)
);
