-- Claims and the retry sweep read the work they may take, not a backlog they pass over.
--
-- The claim walked every pending version in due order and skipped those of jobs it may not
-- upload now (a window closed, a paused destination, another host's scope): behind a
-- million files waiting for tonight's window, each claim of another job read all of them
-- (280 ms a claim, measured). Pending versions are now indexed by job and scope first, and
-- the claim takes the first due of each (job, scope) it may upload (queries.sql,
-- claim_batch). The retry sweep looked for due retries among every pending version; it now
-- reads an index of the pending versions that have been tried before.
--
-- Cost: both indexes hold pending versions only, but each build reads file_versions once,
-- while writes to it wait (docs/install.md, "Upgrading a large ledger": build them
-- beforehand with CREATE INDEX CONCURRENTLY and this file finds them).

-- An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind: build it again.
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE c.relname IN ('file_versions_claimable_by_job', 'file_versions_retrying')
                  AND NOT i.indisvalid LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END $$;

CREATE INDEX IF NOT EXISTS file_versions_claimable_by_job
    ON file_versions (job, scope, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS file_versions_retrying
    ON file_versions (job, next_attempt_at) WHERE state = 'pending' AND attempts > 0;
DROP INDEX IF EXISTS file_versions_claimable;
