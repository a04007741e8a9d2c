-- Each experiment's test design, fixed at its first analysis under a seed and never re-derived:
-- the method, family-wise alpha and its split, the mixing parameter's tuning (tau2 / rho),
-- the group-sequential maximum information and looks, the SRM test's threshold and prior.
CREATE TABLE decision_designs (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    design         jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_key, seed)
);
