-- The inventory (issue 11): access keys, source IPs, accounts, hourly call rollups and alarms with
-- their lifecycle. Portable between SQLite and PostgreSQL: times are Unix seconds (BIGINT), lists
-- and documents are JSON text, no engine-specific types or functions.

CREATE TABLE IF NOT EXISTS inv_keys (
    cloud TEXT NOT NULL,
    key_id TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    principal TEXT NOT NULL DEFAULT '',
    principal_type TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    ip_hidden BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (cloud, key_id)
);

CREATE TABLE IF NOT EXISTS inv_key_ips (
    cloud TEXT NOT NULL,
    key_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (cloud, key_id, ip)
);

CREATE TABLE IF NOT EXISTS inv_key_apis (
    cloud TEXT NOT NULL,
    key_id TEXT NOT NULL,
    api TEXT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (cloud, key_id, api)
);

CREATE TABLE IF NOT EXISTS inv_ips (
    ip TEXT PRIMARY KEY,
    country TEXT NOT NULL DEFAULT '',
    city TEXT NOT NULL DEFAULT '',
    asn BIGINT NOT NULL DEFAULT 0,
    as_org TEXT NOT NULL DEFAULT '',
    classes TEXT NOT NULL DEFAULT '[]',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS inv_accounts (
    cloud TEXT NOT NULL,
    account TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (cloud, account)
);

-- Calls per (key, source IP, API, hour): which IPs called a key, which APIs, when.
CREATE TABLE IF NOT EXISTS inv_calls_hourly (
    cloud TEXT NOT NULL,
    key_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    api TEXT NOT NULL,
    hour BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (cloud, key_id, ip, api, hour)
);
CREATE INDEX IF NOT EXISTS inv_calls_hourly_hour ON inv_calls_hourly (hour);

CREATE TABLE IF NOT EXISTS inv_alarms (
    alarm_id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    severity_rank BIGINT NOT NULL,
    cloud TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    key_id TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    count BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inv_alarms_key ON inv_alarms (key_id);
CREATE INDEX IF NOT EXISTS inv_alarms_last_seen ON inv_alarms (last_seen);

-- Every change made through the API (and every alarm re-raised after being handled).
CREATE TABLE IF NOT EXISTS inv_audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_value TEXT NOT NULL DEFAULT '',
    after_value TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS inv_audit_at ON inv_audit (at);
