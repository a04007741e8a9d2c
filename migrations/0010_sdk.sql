-- Exposure batches sent by client SDKs that assign locally (POST /v1/sdk/exposures): a batch
-- id is recorded in the transaction that writes its assignments and exposures, so a batch the
-- SDK resends after a lost answer is counted once.
CREATE TABLE sdk_exposure_batches (
    batch_id text PRIMARY KEY,
    items integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sdk_exposure_batches_received ON sdk_exposure_batches (received_at);
