-- Latency histograms go from 20 to 100 log-spaced bins a decade (service/events/latency.py):
-- 12 %-wide bins kept the p99 guardrail from catching harms under about 50 %. model_health is
-- a rollup of predictions, which are kept, so it is rebuilt at the new resolution rather than
-- converted (a coarse count cannot be split into fine bins without inventing latencies).
DELETE FROM model_health;
UPDATE rollup_state SET value = 0 WHERE name = 'predictions';
