-- Bandits (policy.method: bandit) re-weight traffic at each analysis: their allocations are
-- written by the decision workers, not loaded from YAML. A process that starts compares the
-- YAML's weights with the latest allocation that came from YAML only, so a restart never
-- undoes a bandit's re-weighting; a changed YAML still wins (a human's edit).
ALTER TABLE allocations ADD COLUMN origin text NOT NULL DEFAULT 'yaml'
    CHECK (origin IN ('yaml', 'bandit'));
