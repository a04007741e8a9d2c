-- Who set an allocation: the YAML (synced by the serving processes) or the decision workers
-- (a shadow graduated to a treatment; a bandit's re-weighting, 0019, names the same column).
-- Syncing compares the YAML's weights with the latest YAML row only, so a restart never undoes
-- a decision's allocation; editing the YAML's weights does.
ALTER TABLE allocations ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'yaml';
ALTER TABLE allocations DROP CONSTRAINT IF EXISTS allocations_origin_check;
ALTER TABLE allocations ADD CONSTRAINT allocations_origin_check
    CHECK (origin IN ('yaml', 'bandit', 'graduation'));
ALTER TABLE allocations ADD COLUMN decision_id uuid;  -- the graduate decision that set it

-- Shadow rows: the mean absolute output difference over the run's values (max_abs_diff is
-- the largest). The shadow report's mean absolute difference and its interval read it; rows
-- written before it fall back to max_abs_diff (an upper bound of it).
ALTER TABLE predictions ADD COLUMN mean_abs_diff real;
