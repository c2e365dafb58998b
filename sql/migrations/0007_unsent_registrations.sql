-- Registrations that are not sent yet (pending or failed), per job: what `uploaderd status`
-- counts and `uploaderd trigger --job J --pending` lists. Sent rows, nearly all of the
-- table, stay out of the index.
CREATE INDEX triggers_unsent ON triggers (job, id) WHERE state IN ('pending', 'failed');
