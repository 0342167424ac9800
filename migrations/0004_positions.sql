-- Exactly-once counting for `akwatch run` (issue 11): the input positions each detection
-- partition's counts reflect, written in the same transaction as the counts, and the partition's
-- owner epoch (bumped by every new owner: a write from an older owner finds it changed and rolls
-- back, so a partition taken over during a rebalance is never counted twice).

CREATE TABLE IF NOT EXISTS inv_owners (
    grp TEXT NOT NULL,
    part BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    claimed BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, part)
);

CREATE TABLE IF NOT EXISTS inv_positions (
    grp TEXT NOT NULL,
    part BIGINT NOT NULL,
    topic TEXT NOT NULL,
    tpart BIGINT NOT NULL,
    pos_offset BIGINT NOT NULL,
    pos_index BIGINT NOT NULL,
    PRIMARY KEY (grp, part, topic, tpart)
);
