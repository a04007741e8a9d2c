-- Access control: scoped API keys, analysts' dashboard sessions, and the server's own secrets.

-- One row per API key. The token (abx_live_<key_id>_<secret>) is shown once at creation and
-- never stored: only the SHA-256 of the whole token is, compared in constant time after the
-- row is found by key_id. Several keys may share a name (a client's keys during a rotation);
-- the name is what the audit log records as the actor (key:<name>).
CREATE TABLE api_keys (
    key_id         text PRIMARY KEY,
    name           text NOT NULL,
    owner          text NOT NULL DEFAULT '',
    created_by     text NOT NULL,
    scopes         text[] NOT NULL,
    token_sha256   bytea NOT NULL,
    rate_limit     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    revoked_at     timestamptz,
    last_used_at   timestamptz,
    CHECK (octet_length(token_sha256) = 32)
);
CREATE INDEX api_keys_by_name ON api_keys (name);

-- Analysts signed in to the dashboards. The cookie holds a signed random session id; only its
-- SHA-256 is stored. A session lives no longer than its key: revoking the key ends it.
CREATE TABLE dashboard_sessions (
    session_sha256 bytea PRIMARY KEY,
    key_id         text NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    csrf_token     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);

-- Secrets every serving process must share and nobody configured, generated once by the first
-- process that needs one (today: the key that signs session cookies).
CREATE TABLE server_secrets (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
