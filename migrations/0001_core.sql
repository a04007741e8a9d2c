-- Experiments synced from YAML, their allocation history, sticky assignments and exposures.
-- Outcomes, decisions and the audit log arrive in later migrations.

CREATE TABLE experiments (
    key               text PRIMARY KEY,
    seed              text NOT NULL,
    status            text NOT NULL,
    definition        jsonb NOT NULL,
    definition_sha256 text NOT NULL,
    source_file       text NOT NULL,
    synced_at         timestamptz NOT NULL DEFAULT now()
);

-- Every allocation (variant weights) an experiment has had under a seed. A new one
-- takes effect at effective_at, and only once every live writer has flushed the
-- first assignments made before it (see writer_heartbeats).
CREATE TABLE allocations (
    allocation_id  bigserial PRIMARY KEY,
    experiment_key text NOT NULL REFERENCES experiments (key),
    seed           text NOT NULL,
    weights        jsonb NOT NULL,
    fingerprint    text NOT NULL,
    effective_at   timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX allocations_by_experiment ON allocations (experiment_key, seed, allocation_id);

-- The sticky store: a unit's first assignment under a seed, never updated.
CREATE TABLE assignments (
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    unit_id        text NOT NULL,
    variant_key    text NOT NULL,
    assigned_at    timestamptz NOT NULL,
    PRIMARY KEY (experiment_key, seed, unit_id)
);

-- One row per (experiment, seed, unit, variant), keeping the first exposure time.
CREATE TABLE exposures (
    experiment_key   text NOT NULL,
    seed             text NOT NULL,
    unit_id          text NOT NULL,
    variant_key      text NOT NULL,
    first_exposed_at timestamptz NOT NULL,
    PRIMARY KEY (experiment_key, seed, unit_id, variant_key)
);

-- Each serving process reports how far its buffered writes have reached PostgreSQL.
CREATE TABLE writer_heartbeats (
    worker_id       text PRIMARY KEY,
    flushed_through timestamptz NOT NULL,
    seen_at         timestamptz NOT NULL
);
