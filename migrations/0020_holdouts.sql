-- The largest share each holdout served under each seed: `abx serve` refuses to start with a
-- smaller one (it would release held-out units into launched treatments), as hot reload does.
CREATE TABLE holdout_shares (
    holdout_key text NOT NULL,
    seed        text NOT NULL,
    share       double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (holdout_key, seed)
);
