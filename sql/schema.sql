-- uploaderd's database schema as it stands after every migration: the one file to read.
--
-- `uploaderd migrate` does not run this file. It runs sql/migrations/NNNN_*.sql in order,
-- on an empty database as on an old one, and those files stay the truth. This file must
-- create exactly what they create: tests/integration/test_schema.py applies both to empty
-- databases and compares their pg_dump --schema-only, so a migration changes this file in
-- the same commit.
--
-- It also creates a fresh database (`psql -v ON_ERROR_STOP=1 -1 -f schema.sql`): the last
-- statements record every migration as applied, so `uploaderd migrate` then finds nothing
-- to do and applies later migrations as usual.
--
-- Columns appear in their physical order, which is the order the migrations added them (a
-- later column sits at the end of its table, not next to its kin): `SELECT *` and
-- pg_dump see this order. Constraints written inline get PostgreSQL's default names
-- (table_column_check, table_columns_key, table_column_fkey), as they do in the migrations.
-- Column by column meanings: docs/database.md.

-- --- sessions -----------------------------------------------------------------------------

-- The files discovered together: a group of the daemon (a top directory, a day, or '' for
-- "none"; session.group_by) or one `uploaderd upload` run (no group key).
CREATE TABLE sessions (
    id               bigserial PRIMARY KEY,
    job              text        NOT NULL,
    host             text        NOT NULL,
    origin           text        NOT NULL CHECK (origin IN ('daemon', 'upload')),
    group_key        text,
    state            text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'complete')),
    opened_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    closed_reason    text CHECK (closed_reason IN ('idle', 'marker', 'run')),
    -- Whether discovery saw the session's marker file, so closing sessions does not search
    -- their files. NULL: a session opened before 0005 (searched).
    marker_seen      boolean DEFAULT false
);
-- At most one open session per group, so concurrent discoverers share it.
CREATE UNIQUE INDEX sessions_one_open_per_group
    ON sessions (job, group_key) WHERE state = 'open' AND group_key IS NOT NULL;
-- The open sessions of a job, groups and `upload` runs alike.
CREATE INDEX sessions_open ON sessions (job) WHERE state = 'open';
-- Pruning complete sessions by age.
CREATE INDEX sessions_complete ON sessions (completed_at) WHERE state = 'complete';
-- The Grafana sessions panel filters on opened_at.
CREATE INDEX sessions_opened_at ON sessions (opened_at);

-- --- the trigger outbox -------------------------------------------------------------------

-- One registration call to make, written in the same transaction as what it registers (a
-- completed session, or a batch of uploaded files). retry_base: as in file_versions.
CREATE TABLE triggers (
    id               bigserial PRIMARY KEY,
    job              text        NOT NULL,
    session_id       bigint REFERENCES sessions (id),
    idempotency_key  uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    retry_base       integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Registrations due for a call, per job.
CREATE INDEX triggers_due ON triggers (job, next_attempt_at) WHERE state = 'pending';
CREATE INDEX triggers_by_session ON triggers (session_id);
-- Pruning sent registrations by age.
CREATE INDEX triggers_sent ON triggers (sent_at) WHERE state = 'sent';
-- The Grafana registrations panel filters on created_at.
CREATE INDEX triggers_created_at ON triggers (created_at);
-- Registrations not sent yet, per job: `uploaderd status`, `trigger --job J --pending`.
CREATE INDEX triggers_unsent ON triggers (job, id) WHERE state IN ('pending', 'failed');

-- Every call made for a registration.
CREATE TABLE trigger_calls (
    id               bigserial PRIMARY KEY,
    trigger_id       bigint      NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    host             text        NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    status           integer,             -- HTTP status; NULL when no response came
    error            text,
    response_excerpt text,                -- the first bytes of the body, for operators
    UNIQUE (trigger_id, attempt)
);
-- Registration calls per UTC hour (grafana_trigger_calls_hourly).
CREATE INDEX trigger_calls_started_hour
    ON trigger_calls ((date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'));

-- --- the queue and ledger -----------------------------------------------------------------

-- One row per complete file version: a path of a job with one signature (size, mtime,
-- inode, ctime). A changed file is a new row. Also the queue: workers claim pending rows.
CREATE TABLE file_versions (
    id                  bigserial PRIMARY KEY,
    job                 text        NOT NULL,
    -- The host whose roots hold the file, or '' when the job's roots are a shared mount
    -- (then every host running the job may claim it).
    scope               text        NOT NULL,
    host                text        NOT NULL,          -- the host that discovered it
    root                text        NOT NULL,
    relpath             text        NOT NULL,
    size                bigint      NOT NULL CHECK (size >= 0),
    mtime_ns            bigint      NOT NULL,
    inode               bigint      NOT NULL,
    bucket              text        NOT NULL,
    key                 text        NOT NULL,
    -- gone: the file vanished (or stopped being a regular file) before its upload; final.
    state               text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploading', 'uploaded', 'failed', 'superseded', 'gone')),
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    sha256              text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    etag                text,
    session_id          bigint REFERENCES sessions (id),
    claimed_by          text,                          -- host:pid:token, while uploading
    lease_expires_at    timestamptz,
    discovered_at       timestamptz NOT NULL DEFAULT now(),
    first_attempt_at    timestamptz,
    uploaded_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- attempts at the last `uploaderd retry`: the policy counts attempts - retry_base.
    retry_base          integer     NOT NULL DEFAULT 0,
    trigger_id          bigint REFERENCES triggers (id),  -- the registration carrying it
    registered_at       timestamptz,                      -- when that call succeeded
    disposed_at         timestamptz,                      -- after_upload done
    disposition         text,                             -- deleted, moved to ..., skipped: why
    -- The multipart upload in progress, recorded as soon as it exists, so an attempt after
    -- a crash resumes it.
    multipart_upload_id text,
    multipart_part_size bigint CHECK (multipart_part_size > 0),
    -- The ctime of the signature; NULL on rows from before 0008, matching any ctime until
    -- discovery's first look at their file fills it in.
    ctime_ns            bigint,
    CONSTRAINT file_versions_one_row_per_version
        UNIQUE (job, scope, root, relpath, size, mtime_ns, inode, ctime_ns)
);
-- Claims: the pending versions of each job and scope, oldest due first, so a claim reads
-- the jobs it may upload and never the backlog of one whose window is closed.
CREATE INDEX file_versions_claimable_by_job ON file_versions (job, scope, next_attempt_at, id)
    WHERE state = 'pending';
-- The retry sweep: pending versions tried before, by job and when they are due.
CREATE INDEX file_versions_retrying ON file_versions (job, next_attempt_at)
    WHERE state = 'pending' AND attempts > 0;
-- Expired leases to take back.
CREATE INDEX file_versions_leased ON file_versions (lease_expires_at) WHERE state = 'uploading';
CREATE INDEX file_versions_by_session ON file_versions (session_id);
CREATE INDEX file_versions_by_trigger ON file_versions (trigger_id);
-- Live work only (never the history): oldest pending age, recent errors,
-- `files --state failed`, sessions' unfinished files.
CREATE INDEX file_versions_live ON file_versions (job, state, discovered_at)
    WHERE state IN ('pending', 'uploading', 'failed');
CREATE INDEX file_versions_live_by_session ON file_versions (session_id)
    WHERE state IN ('pending', 'uploading', 'failed');
-- The newest errors, read newest first ten at a time however many files failed.
CREATE INDEX file_versions_errors ON file_versions (updated_at)
    WHERE last_error IS NOT NULL AND state IN ('pending', 'failed');
-- The older pending or failed versions of a path that enqueue_versions supersedes. The
-- predicate is written so that only this index can serve that query, which repeats it to
-- the letter (the reason is in 0005_live_work.sql).
CREATE INDEX file_versions_live_by_path ON file_versions (job, scope, root, relpath)
    WHERE state NOT IN ('uploading', 'uploaded', 'superseded');
-- Versions waiting for after_upload, and for an `on: file_uploaded` registration, oldest
-- upload first.
CREATE INDEX file_versions_undisposed ON file_versions (job, uploaded_at, id)
    WHERE state = 'uploaded' AND disposed_at IS NULL;
CREATE INDEX file_versions_unregistered ON file_versions (job, uploaded_at, id)
    WHERE state = 'uploaded' AND trigger_id IS NULL;
-- Multipart uploads in progress or waiting to be aborted.
CREATE INDEX file_versions_multipart ON file_versions (id) WHERE multipart_upload_id IS NOT NULL;
-- Uploads per UTC hour (grafana_throughput_hourly, grafana_upload_latency_hourly).
CREATE INDEX file_versions_uploaded_hour
    ON file_versions ((date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
    WHERE state = 'uploaded';
-- Uploaded versions by bucket and key: the key-collision check and `uploaderd verify`.
CREATE INDEX file_versions_uploaded_key ON file_versions (bucket, key, id)
    WHERE state = 'uploaded';

-- Every upload attempt of a version.
CREATE TABLE upload_attempts (
    id              bigserial PRIMARY KEY,
    file_version_id bigint      NOT NULL REFERENCES file_versions (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL,
    host            text        NOT NULL,
    worker          text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    outcome         text CHECK (outcome IN ('uploaded', 'failed', 'changed', 'released', 'expired', 'repair')),
    error           text,
    bytes           bigint,
    UNIQUE (file_version_id, attempt)
);
-- Attempts per UTC hour (grafana_attempts_hourly).
CREATE INDEX upload_attempts_started_hour
    ON upload_attempts ((date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'));

-- A destination (a job's bucket, or its trigger endpoint) that keeps failing is paused on
-- the host that saw it fail, so `uploaderd status` can show it.
CREATE TABLE destination_health (
    job                  text        NOT NULL,
    host                 text        NOT NULL,
    kind                 text        NOT NULL CHECK (kind IN ('upload', 'trigger')),
    consecutive_failures integer     NOT NULL DEFAULT 0,
    paused_until         timestamptz,
    last_error           text,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, host, kind)
);

-- --- incremental counts -------------------------------------------------------------------

-- Counts per job and state, and per session and state, kept as file_versions changes, so
-- `status`, the gauges and Grafana never aggregate the history. Statement triggers append
-- one delta row per (job, session, state) a statement changes; a sweep folds the deltas
-- into the counts tables; readers add the two (ledger_job_counts, ledger_session_counts).
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

-- Rebuild the counts from the rows, for an operator or a test that wants to check them
-- (docs/database.md). Blocks writers while it reads the whole table.
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

-- --- retention ----------------------------------------------------------------------------

-- The newest signature of each path whose last version was pruned, so a file still on disk
-- and unchanged is never uploaded again.
CREATE TABLE path_signatures (
    job        text   NOT NULL,
    scope      text   NOT NULL,
    root       text   NOT NULL,
    relpath    text   NOT NULL,
    size       bigint NOT NULL,
    mtime_ns   bigint NOT NULL,
    inode      bigint NOT NULL,
    version_id bigint NOT NULL,  -- the pruned version it came from: a newer one wins
    ctime_ns   bigint,           -- NULL: kept before 0008, matches any ctime
    PRIMARY KEY (job, scope, root, relpath)
);

-- Where the attempt-history prune stopped, so each run reads only what it has not read.
CREATE TABLE prune_progress (
    what    text   PRIMARY KEY,
    last_id bigint NOT NULL
);

-- --- Grafana views ------------------------------------------------------------------------

-- Read-only views for Grafana's PostgreSQL datasource (docs/observability.md). Dashboards
-- query these instead of the tables, so a schema change rewrites a view, not every panel,
-- and a reader role can be granted SELECT on grafana_* alone
-- (monitoring/postgres/grafana_reader.sql). Durations are float8 seconds, sizes bytes;
-- hourly views group on the UTC hour, an immutable expression the *_hour indexes hold, so
-- $__timeFilter(hour) is an index range scan. Each reads its time window or the live work.

-- Files and bytes uploaded, per UTC hour and job.
CREATE VIEW grafana_throughput_hourly AS
SELECT date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       job,
       count(*)                 AS files,
       sum(size)::bigint        AS bytes
FROM file_versions
WHERE state = 'uploaded' AND uploaded_at IS NOT NULL
GROUP BY 1, 2;

-- The queue now: files and bytes per job and state, from the counters, and the oldest file
-- still waiting in each live state (pending, uploading, failed), from the live index. The
-- oldest of the uploaded and superseded files is history: NULL here.
CREATE VIEW grafana_queue_by_state AS
SELECT c.job,
       c.state,
       c.files,
       c.bytes,
       live.oldest                                       AS oldest_discovered_at,
       extract(epoch FROM now() - live.oldest)::float8   AS oldest_age_seconds
FROM ledger_job_counts c
CROSS JOIN LATERAL (
    SELECT min(f.discovered_at) AS oldest
    FROM file_versions f
    WHERE f.job = c.job AND f.state = c.state AND f.state IN ('pending', 'uploading', 'failed')
) live
WHERE c.files > 0;

-- Discovered → uploaded latency (what a user waits for), percentiles per UTC hour and job.
-- Includes settle, queueing, retries and the transfer itself.
CREATE VIEW grafana_upload_latency_hourly AS
SELECT date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       job,
       count(*) AS files,
       percentile_cont(0.5)  WITHIN GROUP (ORDER BY latency) AS p50_seconds,
       percentile_cont(0.9)  WITHIN GROUP (ORDER BY latency) AS p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency) AS p99_seconds,
       max(latency)                                          AS max_seconds
FROM (
    SELECT job, uploaded_at,
           extract(epoch FROM uploaded_at - discovered_at)::float8 AS latency
    FROM file_versions
    WHERE state = 'uploaded' AND uploaded_at IS NOT NULL
) uploaded
GROUP BY 1, 2;

-- Why files are not uploaded: failed for good, or pending a retry after an error, grouped
-- by the error text (which names the S3 code or the local cause, never a secret). Reads the
-- live rows only, through file_versions_live.
CREATE VIEW grafana_failures AS
SELECT job,
       state,
       last_error         AS reason,
       count(*)           AS files,
       sum(size)::bigint  AS bytes,
       max(attempts)      AS max_attempts,
       min(updated_at)    AS first_seen,
       max(updated_at)    AS last_seen
FROM file_versions
WHERE last_error IS NOT NULL AND state IN ('failed', 'pending')
GROUP BY job, state, last_error;

-- Upload attempts per UTC hour, job and outcome. Only the attempts in the hours asked for
-- are read; each finds its job through the primary key of file_versions.
CREATE VIEW grafana_attempts_hourly AS
SELECT date_trunc('hour', a.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       f.job,
       coalesce(a.outcome, 'running')   AS outcome,
       count(*)                         AS attempts,
       coalesce(sum(a.bytes), 0)::bigint AS bytes
FROM upload_attempts a
JOIN file_versions f ON f.id = a.file_version_id
GROUP BY 1, 2, 3;

-- One row per session: progress from the counters, duration, and its registration. A
-- filter on the session's columns (opened_at on the dashboard) reaches sessions' indexes;
-- each session then reads its own counters only.
CREATE VIEW grafana_sessions AS
SELECT s.id                                                     AS session_id,
       s.job,
       s.host,
       s.origin,
       s.group_key,
       s.state,
       s.closed_reason,
       s.opened_at,
       s.last_activity_at,
       s.completed_at,
       extract(epoch FROM coalesce(s.completed_at, now()) - s.opened_at)::float8
                                                                AS duration_seconds,
       coalesce(c.files, 0)                                     AS files,
       coalesce(c.bytes, 0)                                     AS bytes,
       coalesce(c.uploaded, 0)                                  AS uploaded,
       coalesce(c.pending, 0)                                   AS pending,
       coalesce(c.failed, 0)                                    AS failed,
       (SELECT t.state FROM triggers t WHERE t.session_id = s.id
        ORDER BY t.id DESC LIMIT 1)                             AS trigger_state
FROM sessions s
CROSS JOIN LATERAL (
    SELECT sum(n.files)::bigint                                                 AS files,
           sum(n.bytes)::bigint                                                 AS bytes,
           sum(n.files) FILTER (WHERE n.state = 'uploaded')::bigint             AS uploaded,
           sum(n.files) FILTER (WHERE n.state IN ('pending', 'uploading'))::bigint AS pending,
           sum(n.files) FILTER (WHERE n.state = 'failed')::bigint               AS failed
    FROM ledger_session_counts n
    WHERE n.session_id = s.id
) c;

-- One row per registration (the trigger outbox): outcome, calls made, delay to success.
CREATE VIEW grafana_triggers AS
SELECT t.id                                                   AS trigger_id,
       t.job,
       t.session_id,
       t.state,
       t.attempts,
       t.last_status,
       t.last_error,
       t.created_at,
       t.sent_at,
       extract(epoch FROM t.sent_at - t.created_at)::float8    AS delay_seconds,
       (SELECT count(*) FROM file_versions f WHERE f.trigger_id = t.id) AS files,
       (SELECT count(*) FROM trigger_calls c WHERE c.trigger_id = t.id) AS calls
FROM triggers t;

-- Registration calls per UTC hour, job and HTTP status class ('2xx', '5xx', 'no response').
CREATE VIEW grafana_trigger_calls_hourly AS
SELECT date_trunc('hour', c.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       t.job,
       CASE WHEN c.finished_at IS NULL THEN 'running'
            WHEN c.status IS NULL THEN 'no response'
            ELSE (c.status / 100)::text || 'xx' END AS result,
       count(*) AS calls
FROM trigger_calls c
JOIN triggers t ON t.id = c.trigger_id
GROUP BY 1, 2, 3;

-- Destinations (bucket or trigger endpoint) per job and host, and whether they are paused.
CREATE VIEW grafana_destination_health AS
SELECT job,
       host,
       kind,
       consecutive_failures,
       paused_until,
       coalesce(paused_until > now(), false) AS paused,
       last_error,
       updated_at
FROM destination_health;

-- The per-job table: backlog, failures, last success, from the counters.
CREATE VIEW grafana_job_summary AS
SELECT c.job,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'pending'), 0)::bigint   AS pending,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'uploading'), 0)::bigint AS uploading,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'uploaded'), 0)::bigint  AS uploaded,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'failed'), 0)::bigint    AS failed,
       coalesce(sum(c.bytes) FILTER (WHERE c.state IN ('pending', 'uploading')), 0)::bigint
                                                                              AS backlog_bytes,
       extract(epoch FROM now() - (SELECT min(f.discovered_at)
                                   FROM file_versions f
                                   WHERE f.job = c.job AND f.state = 'pending'))::float8
                                                                 AS oldest_pending_age_seconds,
       max(c.last_uploaded_at)                                   AS last_uploaded_at
FROM ledger_job_counts c
GROUP BY c.job
HAVING sum(c.files) > 0;

-- --- leases -------------------------------------------------------------------------------

-- Cluster-wide leases, as rows that hold across PgBouncer's transaction pooling: whose turn
-- it is to run a sweep, and which host discovers a shared job's roots.
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,  -- host:pid:token of the holding process
    host       text        NOT NULL,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 50);

-- --- migrations ---------------------------------------------------------------------------

-- What `uploaderd migrate` keeps (sql/queries.sql, create_migrations_table): a database
-- created from this file is at the last migration below.
CREATE TABLE uploaderd_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO uploaderd_migrations (version, name) VALUES
    (1, '0001_ledger.sql'),
    (2, '0002_sessions_triggers.sql'),
    (3, '0003_grafana_views.sql'),
    (4, '0004_multipart_resume.sql'),
    (5, '0005_live_work.sql'),
    (6, '0006_grafana_views_at_scale.sql'),
    (7, '0007_unsent_registrations.sql'),
    (8, '0008_ctime_in_signature.sql'),
    (9, '0009_gone_and_keys.sql'),
    (10, '0010_claims_per_job.sql'),
    (11, '0011_leases.sql'),
    (12, '0012_repair_attempts.sql');
