-- Outcome events, their deduplication, and per-bucket sufficient statistics.

-- Idempotency: one row per (experiment, event_id), whatever the partition of the event.
CREATE TABLE event_ids (
    experiment_key text NOT NULL,
    event_id       text NOT NULL,
    PRIMARY KEY (experiment_key, event_id)
);

-- Raw outcomes, partitioned by the month they occurred (partitions are created ahead by
-- abx_ensure_outcome_partitions; a default partition catches anything else).
-- status: new -> attributed | pre_period | outside_window | unexposed (pending while the
-- unit's exposure may still be on its way).
CREATE TABLE outcomes (
    event_pk       bigint GENERATED ALWAYS AS IDENTITY,
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    event_id       text NOT NULL,
    unit_id        text NOT NULL,
    metric         text NOT NULL,
    aggregation    text NOT NULL CHECK (aggregation IN ('sum', 'max')),
    value          double precision NOT NULL,
    occurred_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    properties     jsonb,
    status         text NOT NULL DEFAULT 'new',
    variant_key    text
) PARTITION BY RANGE (occurred_at);
CREATE TABLE outcomes_default PARTITION OF outcomes DEFAULT;
-- The rollup reads new and pending events separately; one small index each.
CREATE INDEX outcomes_new ON outcomes (event_pk) WHERE status = 'new';
CREATE INDEX outcomes_pending ON outcomes (event_pk) WHERE status = 'pending';

CREATE FUNCTION abx_ensure_outcome_partitions(months_ahead integer DEFAULT 3)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', now() - interval '1 month')::date;
    name text;
BEGIN
    FOR i IN 0 .. months_ahead + 1 LOOP
        name := format('outcomes_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF outcomes FOR VALUES FROM (%L) TO (%L)',
                name, month_start, (month_start + interval '1 month')::date);
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
END $$;
SELECT abx_ensure_outcome_partitions();

-- Per unit and metric: the unit's metric total after exposure (y) and before it (x, the
-- CUPED covariate). Changes of these totals feed metric_stats below.
CREATE TABLE unit_outcomes (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    metric         text NOT NULL,
    unit_id        text NOT NULL,
    variant_key    text NOT NULL,
    y_total        double precision NOT NULL DEFAULT 0,
    x_total        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, metric, unit_id)
);

-- Sufficient statistics per (experiment, seed, variant, metric, day the change was recorded).
-- Summing buckets up to day d gives the exact sums of per-unit totals as of day d.
CREATE TABLE metric_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    variant_key    text NOT NULL,
    metric         text NOT NULL,
    bucket         date NOT NULL,
    sum_y          double precision NOT NULL DEFAULT 0,
    sum_y2         double precision NOT NULL DEFAULT 0,
    sum_x          double precision NOT NULL DEFAULT 0,
    sum_x2         double precision NOT NULL DEFAULT 0,
    sum_xy         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, variant_key, metric, bucket)
);

-- Exposed units per (experiment, seed, variant, day of first exposure).
ALTER TABLE exposures ADD COLUMN exposure_pk bigint GENERATED ALWAYS AS IDENTITY;
CREATE INDEX exposures_by_pk ON exposures (exposure_pk);
CREATE TABLE exposure_counts (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    variant_key    text NOT NULL,
    bucket         date NOT NULL,
    units          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, variant_key, bucket)
);

-- How far the rollup has read exposures.
CREATE TABLE rollup_state (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO rollup_state VALUES ('exposures', 0);

-- Events per (experiment, status), kept by the rollup so that dashboards never scan outcomes.
CREATE TABLE outcome_counts (
    experiment_key text NOT NULL,
    status         text NOT NULL,
    events         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, status)
);
