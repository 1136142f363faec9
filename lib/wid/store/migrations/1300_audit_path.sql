-- The method and path of every call forwarded with a stored credential, so "who read database X's
-- credentials today" is one indexed query (wid audit --path ... --since ...); jti indexed for "what did
-- this token do". Expand only: older code keeps writing rows without them (docs/operator.md, upgrades).
ALTER TABLE audit_log ADD COLUMN method TEXT;
ALTER TABLE audit_log ADD COLUMN path TEXT;
CREATE INDEX audit_log_path ON audit_log (path, ts);
CREATE INDEX audit_log_jti ON audit_log (jti, ts);
