-- Decisions: the state each experiment is in, every automatic or human action with its numbers
-- (the audit log), and webhook deliveries.

-- The serving state of an experiment under a seed; absent means "running as configured".
-- state: running | ramping | promoted | rolled_back | inconclusive | halted | paused
CREATE TABLE experiment_state (
    experiment_key   text PRIMARY KEY,
    seed             text NOT NULL,
    state            text NOT NULL,
    winner           text,
    rolled_back      text[] NOT NULL DEFAULT '{}',
    ramp_step        integer NOT NULL DEFAULT 0,
    ramp_started_at  timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz NOT NULL DEFAULT now(),
    version          bigint NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The audit log: one row per analysis outcome that changes something, and per human action.
-- kind: ramp | promote | rollback | inconclusive | halt | pause | resume | approve | continue
-- status: applied | awaiting_approval | superseded
CREATE TABLE decisions (
    decision_id    uuid PRIMARY KEY,
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    kind           text NOT NULL,
    variant_key    text,
    status         text NOT NULL,
    actor          text NOT NULL,
    reason         text NOT NULL,
    numbers        jsonb NOT NULL DEFAULT '{}',
    state_before   text,
    state_after    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    applied_at     timestamptz
);
CREATE INDEX decisions_by_experiment ON decisions (experiment_key, created_at);

-- Every analysis run, actionable or not, for the evidence-over-time charts.
CREATE TABLE analysis_runs (
    run_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_key text NOT NULL,
    seed           text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    numbers        jsonb NOT NULL
);
CREATE INDEX analysis_runs_by_experiment ON analysis_runs (experiment_key, created_at);

CREATE TABLE webhook_deliveries (
    delivery_id  uuid PRIMARY KEY,
    decision_id  uuid NOT NULL REFERENCES decisions (decision_id),
    url          text NOT NULL,
    payload      jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (updated_at) WHERE status = 'pending';
