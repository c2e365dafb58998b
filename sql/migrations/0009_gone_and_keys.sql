-- Faults (issue 9):
-- * A version whose file vanished before its upload (or became a FIFO, a socket, a device)
--   ends `gone`: final, not retryable, and it does not hold its session open.
-- * Uploaded versions are found by bucket and key, so a claim can tell that another file
--   (another host's, another path's) already holds the key with different content, and
--   `uploaderd verify` can compare every uploaded version of a key.
ALTER TABLE file_versions DROP CONSTRAINT file_versions_state_check;
ALTER TABLE file_versions ADD CONSTRAINT file_versions_state_check
    CHECK (state IN ('pending', 'uploading', 'uploaded', 'failed', 'superseded', 'gone'));

CREATE INDEX file_versions_uploaded_key ON file_versions (bucket, key, id)
    WHERE state = 'uploaded';
