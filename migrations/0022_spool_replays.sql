-- How far each spool segment's replay reached, written in the transaction of the batch it
-- counts: a segment replayed again (after an outage cut its replay, a restart, or a move
-- aside and back) starts after the last batch PostgreSQL already holds, so rows of tables
-- without an idempotency key (``predictions``, the sketches' sums) are never written twice.
-- ``segment`` is the segment file's name (unique: opening time, pid, random part, sequence);
-- the row is deleted once the segment is gone.
CREATE TABLE spool_replays (
    segment     text PRIMARY KEY,
    line        integer NOT NULL,
    replayed_at timestamptz NOT NULL DEFAULT now()
);
