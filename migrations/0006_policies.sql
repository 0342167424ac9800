-- Policies made through the API (issue 11): allowlist, IP hiding and alarm policy entries, the
-- source every instance renders its `api-*.yaml` policy files from, and a revision bumped by
-- every change (instances poll it and apply a change live).

CREATE TABLE IF NOT EXISTS inv_policies (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    updated BIGINT NOT NULL,
    updated_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kind, id)
);

CREATE TABLE IF NOT EXISTS inv_policy_rev (
    singleton BIGINT PRIMARY KEY,
    rev BIGINT NOT NULL
);

INSERT INTO inv_policy_rev (singleton, rev) VALUES (1, 0) ON CONFLICT (singleton) DO NOTHING
