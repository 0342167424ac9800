-- Configuration risks (issue 11): one row per risk of the credential reports (and, later, the
-- permission snapshots), with a triage status like alarms. `present` is 0 once the newest
-- reports no longer show it (fixed); `seen_gen` marks the snapshot that last listed it.

CREATE TABLE IF NOT EXISTS inv_risks (
    risk_uid TEXT PRIMARY KEY,
    risk_id TEXT NOT NULL,
    name TEXT NOT NULL,
    severity TEXT NOT NULL,
    severity_rank BIGINT NOT NULL,
    cloud TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    principal TEXT NOT NULL DEFAULT '',
    key_id TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    present BIGINT NOT NULL DEFAULT 1,
    seen_gen BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    body TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS inv_risks_key ON inv_risks (key_id);

CREATE INDEX IF NOT EXISTS inv_risks_account ON inv_risks (cloud, account)
