-- Lookups by key without its cloud (a key's page) and by IP (an IP's keys): without these a
-- key's page scans every rollup and the IP list sorted by key count took seconds at 10,000 keys.
CREATE INDEX IF NOT EXISTS inv_calls_hourly_key ON inv_calls_hourly (key_id, hour);
CREATE INDEX IF NOT EXISTS inv_key_ips_ip ON inv_key_ips (ip);
CREATE INDEX IF NOT EXISTS inv_key_ips_key ON inv_key_ips (key_id);
CREATE INDEX IF NOT EXISTS inv_key_apis_key ON inv_key_apis (key_id);
CREATE INDEX IF NOT EXISTS inv_keys_key ON inv_keys (key_id);
CREATE INDEX IF NOT EXISTS inv_alarms_status ON inv_alarms (status, key_id);
