-- Ratio metrics read in buckets, not units (issue 20): the cross products of a ratio's
-- numerator and denominator that the per-metric sums cannot give, kept by the rollup.

-- The (numerator, denominator) pairs the rollup keeps cross products for, and the day it
-- began: its first round after a ratio appeared in the YAML summed the units' totals then
-- (into that day's bucket), and every later change of a unit's totals adds its difference.
-- A read as of a day before `since` has no cross products to read.
CREATE TABLE ratio_pairs (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    numerator      text NOT NULL,
    denominator    text NOT NULL,
    since          date NOT NULL,
    PRIMARY KEY (experiment_key, seed, numerator, denominator)
);

-- Per (pair, segment, variant, day of the change): Σxy, Σx'y', Σxy', Σx'y of per-unit totals
-- (x numerator, y denominator, ' the pre-period), as increments new·new − old·old, so summing
-- days <= d gives the sums as of d exactly as metric_stats does. attribute = segment = ''
-- holds the whole experiment; a segment's rows are those of its units (segment_values).
CREATE TABLE ratio_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    numerator      text NOT NULL,
    denominator    text NOT NULL,
    attribute      text NOT NULL,
    segment        text NOT NULL,
    variant_key    text NOT NULL,
    bucket         date NOT NULL,
    sum_xy         double precision NOT NULL DEFAULT 0,
    sum_xpyp       double precision NOT NULL DEFAULT 0,
    sum_xyp        double precision NOT NULL DEFAULT 0,
    sum_xpy        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, numerator, denominator, attribute, segment, variant_key,
                 bucket)
);

-- A windowed ratio's cross products by the unit's exposure day (its cohort), as
-- metric_cohort_stats: summing the cohorts whose window has closed gives mature units only.
CREATE TABLE ratio_cohort_stats (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    numerator      text NOT NULL,
    denominator    text NOT NULL,
    variant_key    text NOT NULL,
    cohort         date NOT NULL,
    sum_xy         double precision NOT NULL DEFAULT 0,
    sum_xpyp       double precision NOT NULL DEFAULT 0,
    sum_xyp        double precision NOT NULL DEFAULT 0,
    sum_xpy        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_key, seed, numerator, denominator, variant_key, cohort)
);
