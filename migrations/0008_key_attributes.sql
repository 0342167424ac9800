-- A key's regions and user agents with their counts (issue 11), bounded per key like its IPs
-- and APIs.

CREATE TABLE IF NOT EXISTS inv_key_attrs (
    cloud TEXT NOT NULL,
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (cloud, key_id, kind, value)
)
