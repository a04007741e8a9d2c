-- Segments (issue 20): the attributes an experiment is analysed by, recorded with each unit's
-- first exposure, and the rollup's sums per segment (service/experiments/segments.py).

-- The unit's segment attributes from the request of its first exposure, written in the
-- transaction that writes the exposure and never updated: a later request's attributes may
-- be the treatment's doing.
CREATE TABLE exposure_attributes (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    unit_id        text NOT NULL,
    attributes     jsonb NOT NULL,
    exposed_at     timestamptz NOT NULL,
    PRIMARY KEY (experiment_key, seed, unit_id)
);

-- The values with a bucket of their own, and the exposure from which they have it: a unit
-- counted before is in 'other' (so counts and sums agree whatever the YAML's cap does).
CREATE TABLE segment_values (
    experiment_key    text NOT NULL,
    seed              text NOT NULL,
    attribute         text NOT NULL,
    value             text NOT NULL,
    since_exposure_pk bigint NOT NULL,
    PRIMARY KEY (experiment_key, seed, attribute, value)
);

-- Exposed units per segment, as exposure_counts per variant.
CREATE TABLE segment_exposure_counts (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    attribute      text NOT NULL,
    segment        text NOT NULL,
    variant_key    text NOT NULL,
    bucket         date NOT NULL,
    units          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, attribute, segment, variant_key, bucket)
);

-- Sufficient statistics per segment, as metric_stats per variant. The key leads with the
-- metric: the analysis reads one metric (the primary) of one experiment.
CREATE TABLE segment_metric_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    attribute      text NOT NULL,
    segment        text NOT NULL,
    variant_key    text NOT NULL,
    metric         text NOT NULL,
    bucket         date NOT NULL,
    sum_y          double precision NOT NULL DEFAULT 0,
    sum_y2         double precision NOT NULL DEFAULT 0,
    sum_x          double precision NOT NULL DEFAULT 0,
    sum_x2         double precision NOT NULL DEFAULT 0,
    sum_xy         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, metric, attribute, segment, variant_key, bucket)
);
