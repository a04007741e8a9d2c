-- The request that caused a webhook delivery (a human action through the API, or the
-- analysis task's own id): sent as X-Request-ID, so a receiver's logs join abx's.
ALTER TABLE webhook_deliveries ADD COLUMN request_id text;
