-- Per-variant model health, rolled up from predictions: requests, fallbacks and a latency
-- histogram per day, so guardrails and dashboards never scan the predictions table.
CREATE TABLE model_health (
    experiment_key  text NOT NULL,
    variant_key     text NOT NULL,
    bucket          date NOT NULL,
    requests        bigint NOT NULL DEFAULT 0,
    fallbacks       bigint NOT NULL DEFAULT 0,
    latency_counts  bigint[] NOT NULL,  -- counts per latency bin (service/latency_histogram.py)
    PRIMARY KEY (experiment_key, variant_key, bucket)
);
INSERT INTO rollup_state VALUES ('predictions', 0);
