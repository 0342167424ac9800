-- The principals of the newest credential reports (issue 11): the report's facts about each
-- user (root, MFA, console password and last login, its keys' status, creation and last use),
-- replaced whole by each new set of reports.

CREATE TABLE IF NOT EXISTS inv_principals (
    cloud TEXT NOT NULL,
    account TEXT NOT NULL,
    principal TEXT NOT NULL,
    root BIGINT NOT NULL DEFAULT 0,
    mfa BIGINT NOT NULL DEFAULT -1,
    last_login BIGINT NOT NULL DEFAULT 0,
    active_keys BIGINT NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL,
    PRIMARY KEY (cloud, account, principal)
);

CREATE INDEX IF NOT EXISTS inv_principals_name ON inv_principals (cloud, principal)
