-- A bandit's sums by allocation period, kept by the rollup (issue 20): reading a look costs
-- periods times variants, never units. A unit belongs to the period in force at its first
-- exposure; period 0 starts at the beginning of time, period p >= 1 at bounds[p] (1-based).

-- The bandits the rollup keeps periods for, and the boundaries its rows are filed under.
-- When the allocation history gains a switch after every exposure filed so far (the usual
-- case: a switch is announced ahead of its time), the bounds just grow; otherwise (a switch
-- before exposures already filed, a changed guard) the rollup files the bandit again from
-- the units' totals. A read whose history or guard differs from these scans instead.
CREATE TABLE bandit_periods (
    experiment_key  text NOT NULL,
    seed            text NOT NULL,
    bounds          timestamptz[] NOT NULL,
    guard_seconds   double precision NOT NULL,
    last_exposed_at timestamptz,
    PRIMARY KEY (experiment_key, seed)
);

-- Exposed units per period and variant; settled_units leaves out those exposed within
-- guard_seconds after their period's switch (the sample-ratio test's counts).
CREATE TABLE period_exposure_counts (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    variant_key    text NOT NULL,
    period         integer NOT NULL,
    units          bigint NOT NULL DEFAULT 0,
    settled_units  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, variant_key, period)
);

-- Σy and Σy² of the units' totals per period, variant and metric, as increments
-- new − old of each unit's total (attribution.apply_events), so they are exact sums of the
-- units' current totals.
CREATE TABLE period_metric_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    variant_key    text NOT NULL,
    metric         text NOT NULL,
    period         integer NOT NULL,
    sum_y          double precision NOT NULL DEFAULT 0,
    sum_y2         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, variant_key, metric, period)
);

-- A ratio metric's Σxy (x numerator, y denominator, per-unit totals) per period and variant,
-- for the ratio pairs the rollup keeps (ratio_pairs) of a bandit it keeps periods for.
CREATE TABLE period_ratio_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    numerator      text NOT NULL,
    denominator    text NOT NULL,
    variant_key    text NOT NULL,
    period         integer NOT NULL,
    sum_xy         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, numerator, denominator, variant_key, period)
);
