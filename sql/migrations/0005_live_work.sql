-- Cost follows the work in flight, not the history behind it (docs/database.md, "Scale").
--
-- * Counts per job and state, and per session and state, are kept incrementally: statement
--   triggers on file_versions append one delta row per (job, session, state) a statement
--   changes, and a sweep folds the deltas into the counts tables. Readers add the two, so
--   `status`, the gauges and Grafana never aggregate the history.
-- * Indexes that every timer query can use hold live rows only; the two that covered the
--   whole history for no query (a duplicate of the unique index's prefix, and (job, state))
--   go.
-- * path_signatures keeps the newest signature of a path whose versions were pruned, so a
--   file still on disk and unchanged is never uploaded again.
--
-- Runs once over the existing rows (one recount and two index builds: see docs/install.md,
-- "Upgrading a large ledger"). Daemons should be stopped while it runs.

LOCK TABLE file_versions IN SHARE MODE;

-- --- incremental counts -------------------------------------------------------------------

CREATE TABLE ledger_deltas (
    job              text        NOT NULL,
    session_id       bigint,
    state            text        NOT NULL,
    files            bigint      NOT NULL,
    bytes            bigint      NOT NULL,
    last_uploaded_at timestamptz
);
CREATE INDEX ledger_deltas_by_session ON ledger_deltas (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE job_state_counts (
    job              text        NOT NULL,
    state            text        NOT NULL,
    files            bigint      NOT NULL,
    bytes            bigint      NOT NULL,
    last_uploaded_at timestamptz,
    PRIMARY KEY (job, state)
);

CREATE TABLE session_state_counts (
    session_id bigint NOT NULL,
    state      text   NOT NULL,
    files      bigint NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (session_id, state)
);

-- Rows leave and enter (job, session, state) groups; an UPDATE that changes none of them
-- (a lease renewal, a disposal) nets to zero and writes nothing. Statement-level, with
-- transition tables: one INSERT per statement, whatever the number of rows.
CREATE FUNCTION ledger_count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ledger_deltas (job, session_id, state, files, bytes, last_uploaded_at)
        SELECT job, session_id, state, count(*), sum(size), max(uploaded_at)
        FROM new_rows GROUP BY job, session_id, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO ledger_deltas (job, session_id, state, files, bytes)
        SELECT job, session_id, state, -count(*), -sum(size)
        FROM old_rows GROUP BY job, session_id, state;
    ELSE
        INSERT INTO ledger_deltas (job, session_id, state, files, bytes, last_uploaded_at)
        SELECT job, session_id, state, sum(files), sum(bytes), max(last_uploaded_at)
        FROM (SELECT job, session_id, state, 1 AS files, size AS bytes,
                     CASE WHEN state = 'uploaded' THEN uploaded_at END AS last_uploaded_at
              FROM new_rows
              UNION ALL
              SELECT job, session_id, state, -1, -size, NULL FROM old_rows) d
        GROUP BY job, session_id, state
        HAVING sum(files) <> 0 OR sum(bytes) <> 0;
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables allow one event per trigger.
CREATE TRIGGER file_versions_count_inserts AFTER INSERT ON file_versions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_count_changes();
CREATE TRIGGER file_versions_count_updates AFTER UPDATE ON file_versions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_count_changes();
CREATE TRIGGER file_versions_count_deletes AFTER DELETE ON file_versions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_count_changes();

-- Current totals: the folded counts plus the deltas not yet folded.
CREATE VIEW ledger_job_counts AS
SELECT job, state, sum(files)::bigint AS files, sum(bytes)::bigint AS bytes,
       max(last_uploaded_at) AS last_uploaded_at
FROM (SELECT job, state, files, bytes, last_uploaded_at FROM job_state_counts
      UNION ALL
      SELECT job, state, files, bytes, last_uploaded_at FROM ledger_deltas) c
GROUP BY job, state;

CREATE VIEW ledger_session_counts AS
SELECT session_id, state, sum(files)::bigint AS files, sum(bytes)::bigint AS bytes
FROM (SELECT session_id, state, files, bytes FROM session_state_counts
      UNION ALL
      SELECT session_id, state, files, bytes FROM ledger_deltas WHERE session_id IS NOT NULL) c
GROUP BY session_id, state;

-- Rebuild the counts from the rows: for this migration, and for an operator or a test that
-- wants to check them (docs/database.md). Blocks writers while it reads the whole table.
CREATE FUNCTION ledger_recount() RETURNS void LANGUAGE sql AS $$
    LOCK TABLE file_versions IN SHARE MODE;
    LOCK TABLE ledger_deltas, job_state_counts, session_state_counts IN EXCLUSIVE MODE;
    DELETE FROM ledger_deltas;
    DELETE FROM job_state_counts;
    DELETE FROM session_state_counts;
    INSERT INTO job_state_counts (job, state, files, bytes, last_uploaded_at)
    SELECT job, state, count(*), sum(size), max(uploaded_at) FILTER (WHERE state = 'uploaded')
    FROM file_versions GROUP BY job, state;
    INSERT INTO session_state_counts (session_id, state, files, bytes)
    SELECT session_id, state, count(*), sum(size)
    FROM file_versions WHERE session_id IS NOT NULL GROUP BY session_id, state;
$$;

SELECT ledger_recount();

-- Where the counts and the rows disagree (nothing, unless someone edited the tables with the
-- triggers off): a DBA's check, and the test suite's after every test. Reads everything.
CREATE FUNCTION ledger_count_mismatches()
RETURNS TABLE (scope text, id text, state text, counted bigint, actual bigint)
LANGUAGE sql STABLE AS $$
    WITH counted_jobs AS (
        SELECT job, state, files FROM ledger_job_counts WHERE files <> 0
    ), actual_jobs AS (
        SELECT job, state, count(*) AS files FROM file_versions GROUP BY job, state
    ), counted_sessions AS (
        SELECT session_id, state, files FROM ledger_session_counts WHERE files <> 0
    ), actual_sessions AS (
        SELECT session_id, state, count(*) AS files FROM file_versions
        WHERE session_id IS NOT NULL GROUP BY session_id, state
    )
    SELECT 'job', coalesce(c.job, a.job), coalesce(c.state, a.state), c.files, a.files
    FROM counted_jobs c FULL JOIN actual_jobs a ON a.job = c.job AND a.state = c.state
    WHERE c.files IS DISTINCT FROM a.files
    UNION ALL
    SELECT 'session', coalesce(c.session_id, a.session_id)::text, coalesce(c.state, a.state),
           c.files, a.files
    FROM counted_sessions c
    FULL JOIN actual_sessions a ON a.session_id = c.session_id AND a.state = c.state
    WHERE c.files IS DISTINCT FROM a.files;
$$;

-- --- live-work indexes --------------------------------------------------------------------

-- Oldest pending age, recent errors, `files --state failed`, sessions' unfinished files.
CREATE INDEX file_versions_live ON file_versions (job, state, discovered_at)
    WHERE state IN ('pending', 'uploading', 'failed');
CREATE INDEX file_versions_live_by_session ON file_versions (session_id)
    WHERE state IN ('pending', 'uploading', 'failed');
-- The newest errors (`status`, the recent-errors list): a backlog of failed files is still
-- read newest first, ten rows, not sorted whole.
CREATE INDEX file_versions_errors ON file_versions (updated_at)
    WHERE last_error IS NOT NULL AND state IN ('pending', 'failed');
-- The older pending or failed versions of a path a batch queues anew (superseded by it): a
-- probe per new row. Before a table's first ANALYZE (or with statistics from before a big
-- backlog) the planner prefers walking file_versions_live, smaller and as "selective" by its
-- estimates, which reads every live row of the job for each new row: quadratic while a
-- fresh ledger fills. So the predicate is written so that only this index can serve
-- enqueue_versions (which repeats it to the letter): file_versions_live's cannot be proved
-- from it. Given the state CHECK, it holds the pending and failed rows.
CREATE INDEX file_versions_live_by_path ON file_versions (job, scope, root, relpath)
    WHERE state NOT IN ('uploading', 'uploaded', 'superseded');
-- Versions waiting for after_upload, and for an `on: file_uploaded` registration, oldest
-- upload first. Keyed on uploaded_at, not id: ordered by id, a job's batch could be read
-- through the primary key instead, and after an upgrade the planner does choose that,
-- misled by the history still in these indexes (the rows of jobs that keep their files or
-- register none); no other index offers this order.
DROP INDEX file_versions_undisposed;
CREATE INDEX file_versions_undisposed ON file_versions (job, uploaded_at, id)
    WHERE state = 'uploaded' AND disposed_at IS NULL;
DROP INDEX file_versions_unregistered;
CREATE INDEX file_versions_unregistered ON file_versions (job, uploaded_at, id)
    WHERE state = 'uploaded' AND trigger_id IS NULL;
-- Multipart uploads in progress or waiting to be aborted.
CREATE INDEX file_versions_multipart ON file_versions (id) WHERE multipart_upload_id IS NOT NULL;
-- The unique index (job, scope, root, relpath, size, mtime_ns, inode) serves every lookup
-- by path; (job, state) served only whole-history aggregates.
DROP INDEX file_versions_by_path;
DROP INDEX file_versions_by_job_state;

-- Discovery records the marker file of a session when it queues it, so closing sessions does
-- not search their files. NULL: a session opened before this migration (searched as before).
ALTER TABLE sessions ADD COLUMN marker_seen boolean;
ALTER TABLE sessions ALTER COLUMN marker_seen SET DEFAULT false;
-- The open sessions of a job, daemon groups and `upload` runs alike (the unique index
-- covers only the groups).
CREATE INDEX sessions_open ON sessions (job) WHERE state = 'open';
-- Pruning complete sessions and sent registrations by age.
CREATE INDEX sessions_complete ON sessions (completed_at) WHERE state = 'complete';
CREATE INDEX triggers_sent ON triggers (sent_at) WHERE state = 'sent';

-- --- retention ----------------------------------------------------------------------------

-- The newest signature of each path whose last version was pruned.
CREATE TABLE path_signatures (
    job        text   NOT NULL,
    scope      text   NOT NULL,
    root       text   NOT NULL,
    relpath    text   NOT NULL,
    size       bigint NOT NULL,
    mtime_ns   bigint NOT NULL,
    inode      bigint NOT NULL,
    version_id bigint NOT NULL,  -- the pruned version it came from: a newer one wins
    PRIMARY KEY (job, scope, root, relpath)
);

-- Where the attempt-history prune stopped, so each run reads only what it has not read.
CREATE TABLE prune_progress (
    what    text   PRIMARY KEY,
    last_id bigint NOT NULL
);
