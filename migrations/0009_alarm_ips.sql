-- The source IPs each alarm has named (issue 12): the IP list's "with alarms" filter and an IP's
-- alarms, by index instead of a scan of every alarm's body per IP. Filled as alarms are stored;
-- the alarms stored before this migration are read once when it runs (inventory::backfill).

CREATE TABLE IF NOT EXISTS inv_alarm_ips (
    alarm_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    PRIMARY KEY (alarm_id, ip)
);

CREATE INDEX IF NOT EXISTS inv_alarm_ips_ip ON inv_alarm_ips (ip)
