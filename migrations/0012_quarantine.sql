-- Rows the database refused (a data error, not an outage), set aside so that they never
-- block the rows behind them. ``row_json`` is the row as ASCII JSON (NUL and lone surrogates
-- escaped), so that what PostgreSQL refused in its own column can still be kept here.
CREATE TABLE quarantine (
    quarantine_id  bigserial PRIMARY KEY,
    stream         text NOT NULL,
    row_json       text NOT NULL,
    error          text NOT NULL,
    sqlstate       text,
    source         text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX quarantine_stream ON quarantine (stream, quarantine_id);
