-- The method and path of every call forwarded with a stored credential, so "who read database X's
-- credentials today" is one indexed query (wid audit --path ... --since ...); jti indexed for "what did
-- this token do". `status` is the upstream's answer (or ours, when the call could not be made) and
-- `outcome` the error id of a call that failed. Expand only: older code keeps writing rows without them.
ALTER TABLE audit_log ADD COLUMN method TEXT;
ALTER TABLE audit_log ADD COLUMN path TEXT;
ALTER TABLE audit_log ADD COLUMN status INTEGER;
ALTER TABLE audit_log ADD COLUMN outcome TEXT;
CREATE INDEX audit_log_path ON audit_log (path, ts);
CREATE INDEX audit_log_jti ON audit_log (jti, ts);
