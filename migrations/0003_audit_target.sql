-- An alarm's history (its audit entries) without scanning the whole, ever-growing audit log.
CREATE INDEX IF NOT EXISTS inv_audit_target ON inv_audit (target, at);
