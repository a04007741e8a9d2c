-- Which registry version each variant's model was, for every version ever loaded to serve
-- (issue 21, lineage). `predictions` holds the served file's checksum only: once an alias
-- moves, the current YAML no longer says which registry version an older checksum was. Each
-- serving process writes a row when it loads or reloads a registry model (through the batch
-- writer, never per request); the lineage read joins it on (experiment, variant, checksum).
-- `first_loaded_at` keeps the earliest load of any process.
CREATE TABLE registry_versions (
    experiment_key   text NOT NULL,
    variant_key      text NOT NULL,
    model_sha256     text NOT NULL,
    registry_uri     text NOT NULL,
    registry_name    text NOT NULL,
    registry_version text NOT NULL,
    first_loaded_at  timestamptz NOT NULL,
    PRIMARY KEY (experiment_key, variant_key, model_sha256, registry_uri, registry_version)
);
