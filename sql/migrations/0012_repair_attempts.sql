-- `uploaderd verify --repair` puts an uploaded version whose object S3 lost (or holds other
-- bytes) back in the queue, and records why as an attempt of its own: outcome 'repair'.
-- The migration's transaction holds upload_attempts for one read of its rows (the attempts
-- retention keeps, 30 days by default): every old row satisfies the check, it replaces a
-- narrower one.
ALTER TABLE upload_attempts DROP CONSTRAINT upload_attempts_outcome_check;
ALTER TABLE upload_attempts ADD CONSTRAINT upload_attempts_outcome_check
    CHECK (outcome IN ('uploaded', 'failed', 'changed', 'released', 'expired', 'repair'))
    NOT VALID;
ALTER TABLE upload_attempts VALIDATE CONSTRAINT upload_attempts_outcome_check;
