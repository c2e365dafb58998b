-- Every query the daemon and the commands run, one named block each ("-- name: NAME").
-- uploaderd.ledger loads this file once and refers to the blocks by name; parameters are
-- bound by psycopg2 (%(name)s), never formatted into the text.

-- name: open_sessions
-- The open session of each group, created on first use; one round trip for a whole batch.
WITH wanted AS (SELECT DISTINCT unnest(%(group_keys)s::text[]) AS group_key)
INSERT INTO sessions (job, host, origin, group_key)
SELECT %(job)s, %(host)s, 'daemon', group_key FROM wanted
ON CONFLICT (job, group_key) WHERE state = 'open' AND group_key IS NOT NULL
DO UPDATE SET last_activity_at = now()
RETURNING id, group_key;

-- name: enqueue_versions
-- New complete versions in one statement. Older versions of the same paths that never made
-- it (pending or failed) are superseded: their content is gone from disk. A session whose
-- marker file arrives is marked, so closing it needs no search of its files.
WITH incoming AS (
    SELECT * FROM unnest(
        %(roots)s::text[], %(relpaths)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[],
        %(inodes)s::bigint[], %(ctimes)s::bigint[], %(keys)s::text[], %(sessions)s::bigint[],
        %(errors)s::text[]
    ) AS i(root, relpath, size, mtime_ns, inode, ctime_ns, key, session_id, error)
), inserted AS (
    -- A version that can never upload (no safe key) is recorded as failed at once.
    INSERT INTO file_versions (job, scope, host, root, relpath, size, mtime_ns, inode, ctime_ns,
                               bucket, key, session_id, state, last_error)
    SELECT %(job)s, %(scope)s, %(host)s, i.root, i.relpath, i.size, i.mtime_ns, i.inode,
           i.ctime_ns, %(bucket)s, i.key, i.session_id,
           CASE WHEN i.error IS NULL THEN 'pending' ELSE 'failed' END, i.error
    FROM incoming i
    -- The same version recorded without a ctime (before migration 0008) is this one: the
    -- unique constraint cannot see that, a NULL being distinct from everything. OFFSET 0
    -- keeps it one probe per new row: as an anti-join PostgreSQL hashed every version of
    -- the job for each batch (270 ms a batch at 5 M versions, growing with the history).
    WHERE NOT EXISTS (SELECT 1 FROM file_versions o
                      WHERE o.job = %(job)s AND o.scope = %(scope)s AND o.root = i.root
                        AND o.relpath = i.relpath AND o.size = i.size
                        AND o.mtime_ns = i.mtime_ns AND o.inode = i.inode
                        AND (o.ctime_ns IS NULL OR i.ctime_ns IS NULL)
                      OFFSET 0)
    ON CONFLICT ON CONSTRAINT file_versions_one_row_per_version DO NOTHING
    RETURNING id, root, relpath, session_id
), superseded AS (
    -- One probe of file_versions_live_by_path per new row, never a walk of the job's live
    -- rows: OFFSET 0 keeps the LATERAL subquery from being flattened into a hash join of
    -- them, and the state test is that index's predicate to the letter (pending or failed),
    -- which no other partial index can be proved from (see migration 0005).
    UPDATE file_versions old
    SET state = 'superseded', last_error = 'replaced by a newer version', updated_at = now()
    WHERE old.id = ANY (ARRAY(
        SELECT earlier.id
        FROM inserted i
        CROSS JOIN LATERAL (
            SELECT o.id FROM file_versions o
            WHERE o.job = %(job)s AND o.scope = %(scope)s AND o.root = i.root
              AND o.relpath = i.relpath AND o.id < i.id
              AND o.state NOT IN ('uploading', 'uploaded', 'superseded')
            OFFSET 0
        ) earlier
    ))
    RETURNING old.id
), marked AS (
    UPDATE sessions SET marker_seen = true
    WHERE %(marker)s::text IS NOT NULL
      AND id = ANY (ARRAY(SELECT session_id FROM inserted
                          WHERE relpath = %(marker)s OR right(relpath, length(%(marker)s) + 1)
                                                        = '/' || %(marker)s))
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM superseded);
-- name: notify_work
-- The payload names the enqueuing host: a pool wakes at once only for its own host's work
-- (wanted_notice in store.py reads it). The retry sweep's payload is the job name alone.
SELECT pg_notify('uploaderd_work', json_build_object('job', %(job)s::text, 'host', %(host)s::text)::text);

-- name: listen_work
LISTEN uploaderd_work;

-- name: known_paths
-- Discovery's question for a batch of candidates: which (root, relpath) already have exactly
-- this signature in the ledger, as a version or as the signature kept when its versions were
-- pruned. One probe of a unique index per candidate; nothing is held in memory. OFFSET 0
-- keeps each LATERAL a per-candidate probe: flattened, PostgreSQL may join the batch to
-- every version of the job instead (a hash of them all, built for every batch).
-- A signature recorded before migration 0008 has no ctime and matches any; such a match
-- comes back with the version id (or "a pruned signature") so that it adopts the file's
-- ctime (adopt_ctimes): from that first look on, a rewrite that puts the mtime back is told
-- apart from it.
WITH c AS (
    SELECT * FROM unnest(%(roots)s::text[], %(relpaths)s::text[], %(sizes)s::bigint[],
                         %(mtimes)s::bigint[], %(inodes)s::bigint[], %(ctimes)s::bigint[])
                  AS c(root, relpath, size, mtime_ns, inode, ctime_ns)
)
SELECT c.root, c.relpath, c.ctime_ns,
       CASE WHEN v.ctime_ns IS NULL THEN v.id END AS unstamped_version,
       coalesce(p.unstamped, false) AS unstamped_signature
FROM c
LEFT JOIN LATERAL (
    SELECT f.id, f.ctime_ns FROM file_versions f
    WHERE f.job = %(job)s AND f.scope = %(scope)s AND f.root = c.root
      AND f.relpath = c.relpath AND f.size = c.size AND f.mtime_ns = c.mtime_ns
      AND f.inode = c.inode AND coalesce(f.ctime_ns = c.ctime_ns, true)
    ORDER BY f.ctime_ns NULLS LAST
    LIMIT 1 OFFSET 0
) v ON true
LEFT JOIN LATERAL (
    SELECT p.ctime_ns IS NULL AS unstamped FROM path_signatures p
    WHERE p.job = %(job)s AND p.scope = %(scope)s AND p.root = c.root
      AND p.relpath = c.relpath AND p.size = c.size AND p.mtime_ns = c.mtime_ns
      AND p.inode = c.inode AND coalesce(p.ctime_ns = c.ctime_ns, true)
    OFFSET 0
) p ON true
WHERE v.id IS NOT NULL OR p.unstamped IS NOT NULL;

-- name: adopt_ctimes
-- Versions and pruned signatures recorded before migration 0008, matched by a file on disk
-- (known_paths): they take its ctime. Rare (once per such file), and by primary key.
WITH stamped AS (
    UPDATE file_versions f SET ctime_ns = v.ctime_ns
    FROM unnest(%(ids)s::bigint[], %(ctimes)s::bigint[]) AS v(id, ctime_ns)
    WHERE f.id = ANY(%(ids)s::bigint[]) AND f.id = v.id AND f.ctime_ns IS NULL
)
UPDATE path_signatures p SET ctime_ns = s.ctime_ns
FROM unnest(%(roots)s::text[], %(relpaths)s::text[], %(signature_ctimes)s::bigint[])
     AS s(root, relpath, ctime_ns)
WHERE p.job = %(job)s AND p.scope = %(scope)s AND p.root = s.root AND p.relpath = s.relpath
  AND p.ctime_ns IS NULL;

-- name: claim_batch
-- A short claim: lock free rows without waiting on other claimers, mark them with our
-- worker id, the attempt number and a lease, and open their attempt rows. Committed at once.
WITH claimed AS (
    UPDATE file_versions
    SET state = 'uploading', attempts = attempts + 1, claimed_by = %(worker)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        first_attempt_at = coalesce(first_attempt_at, now()), updated_at = now()
    WHERE id = ANY (ARRAY(
        -- The oldest due first, among the first due of each job and scope: one short walk
        -- of file_versions_claimable_by_job per pair, never through the backlog of a job
        -- this claim may not take. Twice the limit is looked at, so a claimer that meets
        -- the rows another one holds still fills its batch; those are skipped, not awaited.
        SELECT f.id FROM file_versions f
        WHERE f.id = ANY (ARRAY(
                SELECT due.id
                FROM unnest(%(jobs)s::text[]) j (job)
                CROSS JOIN unnest(%(scopes)s::text[]) s (scope)
                CROSS JOIN LATERAL (
                    SELECT o.id, o.next_attempt_at FROM file_versions o
                    WHERE o.state = 'pending' AND o.job = j.job AND o.scope = s.scope
                      AND o.next_attempt_at <= now()
                    ORDER BY o.next_attempt_at, o.id
                    LIMIT 2 * %(limit)s
                ) due
                ORDER BY due.next_attempt_at, due.id
                LIMIT 2 * %(limit)s))
          -- 'pending' arrives as a parameter, not a literal: from the literal the planner
          -- can prove file_versions_claimable_by_job's predicate and walk that whole index
          -- for these ids, a plan it takes while the pending rows are few and keeps when a
          -- job's backlog fills it (0.5 s a claim beside a million new files, measured).
          AND f.state = %(pending)s AND f.next_attempt_at <= now()
        ORDER BY f.next_attempt_at, f.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id, job, scope, root, relpath, size, mtime_ns, inode, bucket, key, attempts,
              session_id, attempts - retry_base AS tries, multipart_upload_id,
              multipart_part_size, ctime_ns,
              -- requeued by `verify --repair` (requeue_for_repair): counted when it uploads
              coalesce(last_error LIKE 'repair: %%', false) AS repair
), attempts AS (
    -- A released attempt gave its number back (release_claims); its row is reused.
    INSERT INTO upload_attempts (file_version_id, attempt, host, worker)
    SELECT id, attempts, %(host)s, %(worker)s FROM claimed
    ON CONFLICT (file_version_id, attempt) DO UPDATE
    SET host = excluded.host, worker = excluded.worker, started_at = now(),
        finished_at = NULL, outcome = NULL, error = NULL, bytes = NULL
)
-- With each claim, the newest upload of another file (another host's or another path's) to
-- the same bucket and key: the worker refuses to overwrite it with different content (two
-- hosts running one non-shared job, or a key template that maps two paths to one key).
SELECT c.id, c.job, c.root, c.relpath, c.size, c.mtime_ns, c.inode, c.bucket, c.key,
       c.attempts, c.session_id, c.tries, c.multipart_upload_id, c.multipart_part_size,
       c.ctime_ns, holder.sha256, holder.host || ':' || holder.relpath, c.repair
FROM claimed c
LEFT JOIN LATERAL (
    SELECT h.sha256, h.host, h.relpath FROM file_versions h
    WHERE h.bucket = c.bucket AND h.key = c.key AND h.state = 'uploaded'
      AND (h.scope, h.root, h.relpath) IS DISTINCT FROM (c.scope, c.root, c.relpath)
    ORDER BY h.id DESC
    LIMIT 1
) holder ON true
ORDER BY c.id;

-- name: record_multipart
-- The multipart upload an attempt created, fenced like its outcome.
UPDATE file_versions
SET multipart_upload_id = %(upload_id)s, multipart_part_size = %(part_size)s
WHERE id = %(id)s AND claimed_by = %(worker)s AND attempts = %(attempt)s
  AND state = 'uploading';

-- name: abandoned_uploads
-- Multipart uploads nothing will resume: their version failed, was superseded (by a
-- worker, or by discovery queuing a newer version) or its file is gone. Read through the
-- small index of versions with a multipart upload recorded.
SELECT id, job, bucket, key, multipart_upload_id
FROM file_versions
WHERE multipart_upload_id IS NOT NULL AND state IN ('failed', 'superseded', 'gone')
ORDER BY id
LIMIT %(limit)s;
-- name: forget_upload
UPDATE file_versions SET multipart_upload_id = NULL, multipart_part_size = NULL
WHERE id = %(id)s AND multipart_upload_id = %(upload_id)s;

-- name: renew_leases
-- 'uploading' arrives as a parameter here, in complete_batch and in release_claims, as
-- 'pending' does in claim_batch: from the literal the planner can prove the predicate of
-- file_versions_leased and read every claim of every host to find these ids (20,000 rows
-- for one id beside other hosts' claims, in test_scale.py), instead of probing by key.
UPDATE file_versions
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker)s AND state = %(uploading)s;

-- name: complete_batch
-- Outcomes of finished attempts, fenced on the claimer and the attempt number: a worker
-- whose lease was reclaimed cannot overwrite the newer attempt's result.
WITH outcome AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::int[], %(states)s::text[], %(outcomes)s::text[],
        %(sha256s)s::text[], %(etags)s::text[], %(errors)s::text[], %(delays)s::float8[],
        %(bytes)s::bigint[]
    ) AS o(id, attempt, state, outcome, sha256, etag, error, delay, bytes)
), finished AS (
    UPDATE file_versions fv
    SET state = o.state,
        sha256 = coalesce(o.sha256, fv.sha256),
        etag = coalesce(o.etag, fv.etag),
        last_error = o.error,
        next_attempt_at = CASE WHEN o.delay IS NULL THEN fv.next_attempt_at
                               ELSE now() + make_interval(secs => o.delay) END,
        uploaded_at = CASE WHEN o.state = 'uploaded' THEN now() ELSE fv.uploaded_at END,
        -- A completed multipart upload is nothing to resume; one of a failed or superseded
        -- version stays recorded until the abandoned-uploads sweep aborts it.
        multipart_upload_id = CASE WHEN o.state = 'uploaded' THEN NULL
                                   ELSE fv.multipart_upload_id END,
        multipart_part_size = CASE WHEN o.state = 'uploaded' THEN NULL
                                   ELSE fv.multipart_part_size END,
        -- A job that keeps its files has nothing to dispose of: the version leaves the
        -- undisposed index at once instead of staying there for ever.
        disposed_at = CASE WHEN o.state = 'uploaded' AND fv.job = ANY(%(keeping)s::text[])
                           THEN now() ELSE fv.disposed_at END,
        disposition = CASE WHEN o.state = 'uploaded' AND fv.job = ANY(%(keeping)s::text[])
                           THEN 'kept' ELSE fv.disposition END,
        claimed_by = NULL, lease_expires_at = NULL, updated_at = now()
    FROM outcome o
    -- By primary key whatever the table's statistics: the ids as an array too (joined
    -- alone, a plan made on an empty table walked the whole table for its rows).
    WHERE fv.id = ANY(%(ids)s::bigint[]) AND fv.id = o.id AND fv.attempts = o.attempt
      AND fv.claimed_by = %(worker)s AND fv.state = %(uploading)s
    RETURNING fv.id, o.attempt, o.outcome, o.error, o.bytes
), recorded AS (
    UPDATE upload_attempts a
    SET finished_at = now(), outcome = f.outcome, error = f.error, bytes = f.bytes
    FROM finished f
    WHERE a.file_version_id = ANY (ARRAY(SELECT id FROM finished))
      AND a.file_version_id = f.id AND a.attempt = f.attempt
)
SELECT id FROM finished;

-- name: release_claims
-- Shutdown, or a paused destination: hand unfinished claims back without charging an
-- attempt; the attempt row says why.
WITH released AS (
    UPDATE file_versions
    SET state = 'pending', attempts = attempts - 1, claimed_by = NULL, lease_expires_at = NULL,
        next_attempt_at = now(), updated_at = now()
    WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(worker)s AND state = %(uploading)s
    RETURNING id, attempts + 1 AS attempt
)
UPDATE upload_attempts a
SET finished_at = now(), outcome = 'released', error = %(reason)s
FROM released r
WHERE a.file_version_id = r.id AND a.attempt = r.attempt;

-- name: reclaim_leases
-- Claims whose lease ran out (a crashed or partitioned worker), and claims of workers known
-- to be dead (same host, process gone): back to pending, the attempt recorded as expired.
-- A version whose attempts died this way three times (a file that crashes the daemon, say)
-- is failed instead of retried for ever.
WITH expired AS (
    UPDATE file_versions fv
    SET state = CASE WHEN died.times >= 2 THEN 'failed' ELSE 'pending' END,
        last_error = CASE WHEN died.times >= 2
                          THEN 'the worker died or lost its lease during 3 attempts'
                          ELSE fv.last_error END,
        claimed_by = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
    FROM (
        SELECT v.id, (SELECT count(*) FROM upload_attempts a
                      WHERE a.file_version_id = v.id AND a.outcome = 'expired') AS times
        FROM file_versions v
        WHERE v.state = 'uploading'
          AND (v.lease_expires_at < now() OR v.claimed_by = ANY(%(dead_workers)s::text[]))
    ) died
    WHERE fv.id = died.id
    RETURNING fv.id, fv.attempts
), recorded AS (
    UPDATE upload_attempts a
    SET finished_at = now(), outcome = 'expired', error = 'lease expired'
    FROM expired e
    WHERE a.file_version_id = e.id AND a.attempt = e.attempts
)
SELECT count(*) FROM expired;

-- name: workers_on_host
SELECT DISTINCT claimed_by FROM file_versions
WHERE state = 'uploading' AND claimed_by LIKE %(prefix)s;

-- name: job_counts
-- Per job and state: files and bytes from the incremental counts, and for the live states
-- the age of the oldest version (one probe of the live index each).
SELECT c.job, c.state, c.files, c.bytes,
       extract(epoch FROM now() - (
           SELECT min(f.discovered_at) FROM file_versions f
           WHERE f.job = c.job AND f.state = c.state
             AND f.state IN ('pending', 'uploading', 'failed')))::float8 AS oldest_age_seconds,
       c.last_uploaded_at
FROM ledger_job_counts c
WHERE c.files <> 0 AND (%(job)s::text IS NULL OR c.job = %(job)s)
ORDER BY c.job, c.state;

-- name: compact_counts
-- Fold the deltas the triggers appended into the counts tables, in key order (so two hosts
-- folding at once cannot deadlock). Rows a concurrent writer has not committed stay for the
-- next run.
WITH moved AS (
    DELETE FROM ledger_deltas RETURNING *
), jobs AS (
    INSERT INTO job_state_counts AS c (job, state, files, bytes, last_uploaded_at)
    SELECT job, state, sum(files), sum(bytes), max(last_uploaded_at)
    FROM moved GROUP BY job, state ORDER BY job, state
    ON CONFLICT (job, state) DO UPDATE
    SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes,
        last_uploaded_at = greatest(c.last_uploaded_at, excluded.last_uploaded_at)
), sessions AS (
    INSERT INTO session_state_counts AS c (session_id, state, files, bytes)
    SELECT session_id, state, sum(files), sum(bytes)
    FROM moved WHERE session_id IS NOT NULL
    GROUP BY session_id, state ORDER BY session_id, state
    ON CONFLICT (session_id, state) DO UPDATE
    SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes
)
SELECT count(*) FROM moved;
-- name: recent_errors
-- Live rows only (pending or failed), through the live index.
SELECT job, relpath, state, attempts, last_error, updated_at
FROM file_versions
WHERE last_error IS NOT NULL AND state IN ('pending', 'failed')
  AND (%(job)s::text IS NULL OR job = %(job)s)
ORDER BY updated_at DESC
LIMIT %(limit)s;
-- name: list_files
SELECT id, job, host, relpath, size, state, attempts, bucket, key, sha256, last_error,
       session_id, discovered_at, uploaded_at, next_attempt_at
FROM file_versions
WHERE (%(job)s::text IS NULL OR job = %(job)s)
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(session_id)s::bigint IS NULL OR session_id = %(session_id)s)
ORDER BY id
LIMIT %(limit)s;

-- name: ping
SELECT 1;

-- name: server_identity
-- Which server a new connection reached, and on which history: the cluster's system
-- identifier and the timeline it writes on. A standby promoted after a failover keeps its
-- primary's identifier on a new timeline; a restart changes neither. NULL on a standby.
SELECT CASE WHEN NOT pg_is_in_recovery() THEN
    system_identifier::text || '/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
END
FROM pg_control_system();

-- name: session_settings
-- Once per connection. No JIT: every statement here reads or writes a few rows through an
-- index, but on a ledger of 20 M versions the planner's estimate for a prune batch (its id
-- range is a parameter) passes jit_optimize_above_cost, and compiling took 400 ms of a
-- batch that runs in 4.
-- One plan for each prepared statement (PREPARED in ledger.py), made once: left to choose,
-- PostgreSQL planned enqueue_versions and known_paths at every call, the generic plan of
-- a statement over an array looking dearer than a custom plan for a batch of five files.
-- Each such generic plan is checked for whole-history reads (tests/integration/test_scale).
-- Statements not prepared are planned at every call whatever this says.
-- No sequential scans where an index can serve: a plan is made once per connection, and a
-- table may be empty then (a fresh install; path_signatures before the first prune), where
-- a Seq Scan costs nothing and wins. Kept until an ANALYZE of that table, such a plan made
-- discovery's look-ups a scan of a million signatures each after a first prune (measured,
-- bench/results/2026-12-02-stop-17.md). Every statement here is written for an index; tables no index serves
-- (ledger_deltas, a handful of rows) are still scanned.
SET jit = off;
SET plan_cache_mode = force_generic_plan;
SET enable_seqscan = off;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS uploaderd_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass('uploaderd_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM uploaderd_migrations;

-- name: record_migration
INSERT INTO uploaderd_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: lock_migrations
-- For the transaction of one migration file: two hosts migrating at once take turns, and
-- the second finds the file applied (a transaction-level lock holds through any pooler).
SELECT pg_advisory_xact_lock(hashtext('uploaderd'), hashtext('migrate'));

-- name: open_run_session
-- One run of `uploaderd upload` is one session.
INSERT INTO sessions (job, host, origin) VALUES (%(job)s, %(host)s, 'upload') RETURNING id;

-- name: remember_markers
-- Sessions opened before migration 0005 do not know whether their marker file was queued:
-- search each such open session's files once, and remember the answer (discovery marks
-- the marker from then on), so the session sweep never searches files.
UPDATE sessions o
SET marker_seen = EXISTS (
    SELECT 1 FROM file_versions m
    WHERE m.session_id = o.id
      AND (m.relpath = %(marker)s OR right(m.relpath, length(%(marker)s) + 1) = '/' || %(marker)s))
WHERE o.job = %(job)s AND o.state = 'open' AND o.marker_seen IS NULL;

-- name: drop_empty_run_session
-- An `uploaderd upload` run whose files another process queued first: nothing to keep.
DELETE FROM sessions s
WHERE s.id = %(session_id)s AND s.origin = 'upload' AND s.state = 'open'
  AND NOT EXISTS (SELECT 1 FROM file_versions f WHERE f.session_id = s.id);

-- name: complete_sessions
-- Close a job's open daemon sessions that went idle or saw their marker file, and `upload`
-- runs left open with failures that were retried since, once every version in them is
-- uploaded; with a session trigger, write the registration to the outbox in the same
-- transaction. Reads the open sessions and, for each, one probe of the live-by-session
-- index: never their files.
WITH candidates AS (
    SELECT o.id, o.origin, o.last_activity_at,
           %(marker)s::text IS NOT NULL AND coalesce(o.marker_seen, false) AS found
    FROM sessions o
    WHERE o.job = %(job)s AND o.state = 'open'
      -- Discovery opens (touches) a session, then queues its files in a second statement:
      -- a session touched a moment ago may be about to receive files.
      AND o.last_activity_at < now() - interval '2 seconds'
), done AS (
    UPDATE sessions s
    SET state = 'complete', completed_at = now(),
        closed_reason = CASE WHEN c.origin = 'upload' THEN 'run'
                             WHEN c.found THEN 'marker' ELSE 'idle' END
    FROM candidates c
    -- The job and state again, so the sessions updated are read through sessions_open too:
    -- joined by id alone, PostgreSQL chose a seq scan of every session ever opened.
    WHERE s.id = ANY (ARRAY(SELECT id FROM candidates))
      AND s.id = c.id AND s.job = %(job)s AND s.state = 'open'
      AND (c.origin = 'upload' OR c.found OR (%(idle_seconds)s::float8 IS NOT NULL
                            AND c.last_activity_at < now() - make_interval(
                                secs => %(idle_seconds)s::float8)))
      -- A probe per session (a scalar subquery is never turned into a join, which a plan
      -- made on an empty ledger did as a walk of the whole index).
      AND (SELECT true FROM file_versions f WHERE f.session_id = s.id LIMIT 1)
      AND NOT EXISTS (SELECT 1 FROM file_versions f
                      WHERE f.session_id = s.id AND f.state IN ('pending', 'uploading', 'failed'))
    RETURNING s.id
), outbox AS (
    INSERT INTO triggers (job, session_id)
    SELECT %(job)s, id FROM done WHERE %(register)s
    RETURNING id, session_id
), carried AS (
    UPDATE file_versions f SET trigger_id = o.id
    FROM outbox o
    WHERE f.session_id = ANY (ARRAY(SELECT session_id FROM outbox))
      AND f.session_id = o.session_id AND f.state = 'uploaded' AND f.trigger_id IS NULL
)
SELECT id FROM done;
-- name: complete_run_session
-- The end of an `uploaderd upload` run: complete only when nothing is left to do. True also
-- when a daemon's session sweep completed it first.
WITH done AS (
    UPDATE sessions s
    SET state = 'complete', completed_at = now(), closed_reason = 'run'
    WHERE s.id = %(session_id)s AND s.state = 'open'
      AND NOT EXISTS (SELECT 1 FROM file_versions f
                      WHERE f.session_id = s.id AND f.state IN ('pending', 'uploading', 'failed'))
    RETURNING s.id, s.job
), outbox AS (
    INSERT INTO triggers (job, session_id)
    SELECT job, id FROM done WHERE %(register)s
    RETURNING id, session_id
), carried AS (
    UPDATE file_versions f SET trigger_id = o.id
    FROM outbox o
    WHERE f.session_id = ANY (ARRAY(SELECT session_id FROM outbox))
      AND f.session_id = o.session_id AND f.state = 'uploaded' AND f.trigger_id IS NULL
)
SELECT EXISTS (SELECT 1 FROM done)
    OR EXISTS (SELECT 1 FROM sessions WHERE id = %(session_id)s AND state = 'complete');

-- name: batch_uploaded_files
-- on: file_uploaded: the next batch of uploaded, unregistered files becomes one registration.
WITH batch AS (
    SELECT id FROM file_versions
    WHERE job = %(job)s AND state = 'uploaded' AND trigger_id IS NULL
    ORDER BY uploaded_at, id
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
), outbox AS (
    INSERT INTO triggers (job)
    SELECT %(job)s WHERE EXISTS (SELECT 1 FROM batch)
    RETURNING id
)
UPDATE file_versions f SET trigger_id = outbox.id
FROM outbox
WHERE f.id = ANY (ARRAY(SELECT id FROM batch))
RETURNING f.id;

-- name: due_triggers
SELECT id, session_id, idempotency_key::text, attempts
FROM triggers
WHERE job = %(job)s AND state = 'pending' AND next_attempt_at <= now()
  AND (%(session_id)s::bigint IS NULL OR session_id = %(session_id)s)
ORDER BY next_attempt_at, id
LIMIT %(limit)s;

-- name: start_trigger_call
-- Counted and recorded before the request goes out: a crash after the POST leaves the
-- trigger pending, and the next call carries the same Idempotency-Key.
WITH counted AS (
    UPDATE triggers SET attempts = attempts + 1, updated_at = now()
    WHERE id = %(id)s AND state = 'pending'
    RETURNING id, attempts, attempts - retry_base AS tries
), call AS (
    INSERT INTO trigger_calls (trigger_id, attempt, host)
    SELECT id, attempts, %(host)s FROM counted
)
SELECT attempts, tries FROM counted;

-- name: trigger_manifest
SELECT relpath, bucket, key, size, sha256, uploaded_at
FROM file_versions
WHERE trigger_id = %(id)s
ORDER BY relpath;

-- name: finish_trigger_call
WITH call AS (
    UPDATE trigger_calls
    SET finished_at = now(), status = %(status)s, error = %(error)s,
        response_excerpt = %(excerpt)s
    WHERE trigger_id = %(id)s AND attempt = %(attempt)s
), registered AS (
    UPDATE file_versions SET registered_at = now()
    WHERE trigger_id = %(id)s AND %(state)s = 'sent'
)
UPDATE triggers
SET state = %(state)s, last_status = %(status)s, last_error = %(error)s,
    sent_at = CASE WHEN %(state)s = 'sent' THEN now() ELSE sent_at END,
    next_attempt_at = CASE WHEN %(delay)s::float8 IS NULL THEN next_attempt_at
                           ELSE now() + make_interval(secs => %(delay)s::float8) END,
    updated_at = now()
WHERE id = %(id)s AND attempts = %(attempt)s;

-- name: take_lease
-- A lease for this process: taken when free or expired, and with renew also when this
-- process holds it already. One probe of the primary key; a renewal updates expires_at in
-- place (HOT).
INSERT INTO leases AS l (name, holder, host, expires_at)
VALUES (%(name)s, %(holder)s, split_part(%(holder)s, ':', 1),
        now() + make_interval(secs => %(seconds)s))
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, host = excluded.host, expires_at = excluded.expires_at
WHERE l.expires_at < now() OR (%(renew)s AND l.holder = excluded.holder)
RETURNING true;

-- name: drop_lease
DELETE FROM leases WHERE name = %(name)s AND holder = %(holder)s;

-- name: lease_holders_on_host
-- Whose leases this host has: those of its dead processes are freed at once.
SELECT DISTINCT holder FROM leases WHERE host = %(host)s;

-- name: drop_leases_of
DELETE FROM leases WHERE holder = ANY(%(holders)s);

-- name: notify_due_retries
-- The retry sweep: wake every daemon for each job whose failed files are due again. Two
-- probes of file_versions_retrying per job with retries waiting (the next such job, its
-- earliest due), however many files wait in the queue or for their retry.
WITH RECURSIVE retrying AS (
    SELECT min(job) AS job FROM file_versions WHERE state = 'pending' AND attempts > 0
    UNION ALL
    SELECT (SELECT min(f.job) FROM file_versions f
            WHERE f.state = 'pending' AND f.attempts > 0 AND f.job > r.job)
    FROM retrying r WHERE r.job IS NOT NULL
)
SELECT pg_notify('uploaderd_work', r.job)
FROM retrying r
WHERE r.job IS NOT NULL
  AND (SELECT min(f.next_attempt_at) FROM file_versions f
       WHERE f.state = 'pending' AND f.attempts > 0 AND f.job = r.job) <= now();

-- name: undisposed_files
-- Uploaded (or, with after_upload_when: registered, registered) versions whose file still
-- awaits after_upload, on the roots this host holds. Versions of jobs that keep their files
-- are marked kept when they upload, so the undisposed index holds only work to do.
SELECT id, root, relpath, size, mtime_ns, inode, ctime_ns
FROM file_versions
WHERE job = %(job)s AND scope = ANY(%(scopes)s::text[]) AND state = 'uploaded'
  AND disposed_at IS NULL AND (NOT %(registered_only)s OR registered_at IS NOT NULL)
ORDER BY uploaded_at, id
LIMIT %(limit)s;

-- name: mark_disposed
UPDATE file_versions f SET disposed_at = now(), disposition = d.disposition
FROM unnest(%(ids)s::bigint[], %(dispositions)s::text[]) AS d(id, disposition)
WHERE f.id = d.id;

-- name: set_destination_health
INSERT INTO destination_health AS h (job, host, kind, consecutive_failures, paused_until,
                                     last_error, updated_at)
VALUES (%(job)s, %(host)s, %(kind)s, %(failures)s,
        CASE WHEN %(pause_seconds)s::float8 IS NULL THEN NULL
             ELSE now() + make_interval(secs => %(pause_seconds)s::float8) END,
        %(error)s, now())
ON CONFLICT (job, host, kind) DO UPDATE
SET consecutive_failures = excluded.consecutive_failures, paused_until = excluded.paused_until,
    last_error = excluded.last_error, updated_at = now();

-- name: paused_destinations
SELECT job, host, kind, consecutive_failures, paused_until, last_error
FROM destination_health
WHERE paused_until > now() AND (%(job)s::text IS NULL OR job = %(job)s)
ORDER BY job, kind, host;

-- name: open_session_summaries
-- From the incremental per-session counts: never the sessions' files.
SELECT s.id, s.job, s.origin, s.group_key, s.opened_at, s.last_activity_at,
       coalesce(sum(c.files), 0)::bigint AS files,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'uploaded'), 0)::bigint AS uploaded,
       coalesce(sum(c.files) FILTER (WHERE c.state = 'failed'), 0)::bigint AS failed
FROM sessions s
LEFT JOIN LATERAL (SELECT state, files FROM ledger_session_counts
                   WHERE session_id = s.id) c ON true
WHERE s.state = 'open' AND (%(job)s::text IS NULL OR s.job = %(job)s)
GROUP BY s.id
ORDER BY s.id;
-- name: session
SELECT id, job, host, origin, group_key, state, closed_reason, opened_at, completed_at
FROM sessions WHERE id = %(id)s;

-- name: session_progress
SELECT state, files, bytes
FROM ledger_session_counts WHERE session_id = %(session_id)s AND files <> 0;
-- name: requeue_failed
-- `uploaderd retry`: failed versions (of a session, a job or all) get a fresh set of
-- attempts now; failed registrations are re-queued too.
WITH files AS (
    UPDATE file_versions
    SET state = 'pending', retry_base = attempts, next_attempt_at = now(), updated_at = now()
    WHERE state = 'failed'
      AND (%(all)s OR session_id = %(session_id)s OR job = %(job)s)
    RETURNING id, job
), regs AS (
    UPDATE triggers
    SET state = 'pending', retry_base = attempts, next_attempt_at = now(), updated_at = now()
    WHERE state = 'failed'
      AND (%(all)s OR session_id = %(session_id)s OR job = %(job)s)
    RETURNING id
), woken AS (
    SELECT pg_notify('uploaderd_work', job) FROM (SELECT DISTINCT job FROM files) j
)
SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM regs), (SELECT count(*) FROM woken);

-- name: session_triggers
SELECT id, state, attempts, last_status, last_error, sent_at
FROM triggers WHERE session_id = %(session_id)s ORDER BY id;

-- name: registration_counts
-- `uploaderd status`: per job, the registrations not sent yet, through the unsent index.
SELECT job, state, count(*)::bigint AS registrations,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds,
       greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8 AS next_in
FROM triggers
WHERE state IN ('pending', 'failed') AND (%(job)s::text IS NULL OR job = %(job)s)
GROUP BY job, state
ORDER BY job, state;

-- name: unsent_triggers
-- `uploaderd trigger --job J --pending`: one job's registrations not sent yet.
SELECT id, session_id, state, attempts, last_status, last_error, created_at,
       greatest(0, extract(epoch FROM next_attempt_at - now()))::float8 AS next_in
FROM triggers
WHERE state IN ('pending', 'failed') AND job = %(job)s
ORDER BY id
LIMIT %(limit)s;

-- name: triggers_by_id
SELECT id, session_id, state, attempts, last_status, last_error, sent_at
FROM triggers WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: create_session_trigger
-- `uploaderd trigger --force`: a new registration of everything uploaded in the session.
WITH outbox AS (
    INSERT INTO triggers (job, session_id)
    SELECT %(job)s, %(session_id)s
    WHERE EXISTS (SELECT 1 FROM file_versions
                  WHERE session_id = %(session_id)s AND state = 'uploaded')
    RETURNING id
)
UPDATE file_versions f SET trigger_id = outbox.id
FROM outbox
WHERE f.session_id = %(session_id)s AND f.state = 'uploaded'
RETURNING outbox.id;

-- name: reset_trigger
UPDATE triggers
SET state = 'pending', retry_base = attempts, next_attempt_at = now(), updated_at = now()
WHERE id = %(id)s AND state <> 'sent';

-- name: path_versions
-- `uploaderd explain`: every version of one path, newest first (the unique index's prefix).
SELECT id, state, size, mtime_ns, inode, ctime_ns, attempts, last_error, key, bucket, sha256,
       discovered_at, uploaded_at, next_attempt_at, session_id, registered_at, disposition
FROM file_versions
WHERE job = %(job)s AND scope = %(scope)s AND root = %(root)s AND relpath = %(relpath)s
ORDER BY id DESC;

-- name: path_signature
-- `uploaderd explain`: the signature kept for a path whose versions were pruned.
SELECT size, mtime_ns, inode, ctime_ns, version_id
FROM path_signatures
WHERE job = %(job)s AND scope = %(scope)s AND root = %(root)s AND relpath = %(relpath)s;
-- name: version_attempts
SELECT attempt, host, started_at, finished_at, outcome, error
FROM upload_attempts WHERE file_version_id = %(id)s ORDER BY attempt;

-- name: uploaded_objects
-- `uploaderd verify`: what the ledger says each key holds (its newest uploaded version), and
-- the file it came from (for --repair).
SELECT DISTINCT ON (key) key, bucket, size, sha256, id, root, relpath
FROM file_versions
WHERE job = %(job)s AND state = 'uploaded'
ORDER BY key, id DESC;

-- name: requeue_for_repair
-- `uploaderd verify --repair`: uploaded versions whose object S3 lost or holds other bytes go
-- back to pending, each with an attempt row that says why (outcome 'repair'). The repair
-- takes an attempt number and the retry policy starts afresh after it. Only versions still
-- 'uploaded' are taken: a run at the same time requeues nothing twice.
WITH repaired AS (
    UPDATE file_versions v
    SET state = 'pending', attempts = v.attempts + 1, retry_base = v.attempts + 1,
        next_attempt_at = now(), last_error = r.reason, etag = NULL, uploaded_at = NULL,
        updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) AS r (id, reason)
    WHERE v.id = r.id AND v.state = 'uploaded'
    RETURNING v.id, v.attempts, r.reason
), recorded AS (
    INSERT INTO upload_attempts
        (file_version_id, attempt, host, worker, started_at, finished_at, outcome, error)
    SELECT id, attempts, %(host)s, 'uploaderd verify --repair', now(), now(), 'repair', reason
    FROM repaired
)
SELECT id FROM repaired;

-- name: selection_progress
-- One-shot commands (`upload`, `retry --auto-retry`): files and bytes by state of what they
-- wait on (a session, a job or everything, among the jobs they can upload), from the
-- incremental counts, and for pending files the seconds until the earliest next attempt
-- its claims (``scopes``) may take: of the session's live files, or of each job and scope
-- the first in file_versions_claimable_by_job, never a walk of a backlog.
WITH counts AS (
    SELECT state, files, bytes FROM ledger_session_counts
    WHERE %(session_id)s::bigint IS NOT NULL AND session_id = %(session_id)s
    UNION ALL
    SELECT state, files, bytes FROM ledger_job_counts
    WHERE %(session_id)s::bigint IS NULL AND (%(all)s OR job = %(job)s)
      AND job = ANY(%(jobs)s::text[])
), next_pending AS (
    SELECT min(at) AS at FROM (
        SELECT min(o.next_attempt_at) AS at FROM file_versions o
        WHERE %(session_id)s::bigint IS NOT NULL AND o.session_id = %(session_id)s
          AND o.state = 'pending' AND o.job = ANY(%(jobs)s::text[])
          AND o.scope = ANY(%(scopes)s::text[])
        UNION ALL
        SELECT first.at
        FROM unnest(%(jobs)s::text[]) j (job)
        CROSS JOIN unnest(%(scopes)s::text[]) s (scope)
        CROSS JOIN LATERAL (
            SELECT o.next_attempt_at AS at FROM file_versions o
            WHERE o.state = 'pending' AND o.job = j.job AND o.scope = s.scope
            ORDER BY o.next_attempt_at LIMIT 1
        ) first
        WHERE %(session_id)s::bigint IS NULL AND (%(all)s OR j.job = %(job)s)
    ) n
)
SELECT state, sum(files)::bigint AS files, sum(bytes)::bigint AS bytes,
       CASE WHEN state = 'pending' THEN greatest(0, extract(epoch FROM
           (SELECT at FROM next_pending) - now()))::float8 END AS next_in
FROM counts
GROUP BY state
HAVING sum(files) <> 0;
-- name: key_collisions
-- `uploaderd verify`: keys of the job that more than one file uploaded to with different
-- content (the newest upload of each path counts: a path's own rewrites are its history).
-- Only the last writer's bytes are in S3; the others' are lost.
WITH newest AS (
    SELECT DISTINCT ON (key, scope, root, relpath) key, bucket, host, relpath, sha256
    FROM file_versions
    WHERE job = %(job)s AND state = 'uploaded'
    ORDER BY key, scope, root, relpath, id DESC
)
SELECT bucket, key, array_agg(host || ':' || relpath ORDER BY host, relpath) AS files,
       count(DISTINCT sha256) AS contents
FROM newest
GROUP BY bucket, key
HAVING count(DISTINCT sha256) > 1
ORDER BY bucket, key;

-- name: session_gone_files
-- The files of a registration's session that vanished before their upload (state gone), for
-- its manifest.
SELECT f.relpath, f.size, f.last_error
FROM triggers t JOIN file_versions f ON f.session_id = t.session_id
WHERE t.id = %(id)s AND f.state = 'gone'
ORDER BY f.relpath;

-- name: uploaded_keys_under
-- `uploaderd verify`: every key any job's ledger says it uploaded under a prefix of a bucket,
-- so an object another job put there is not reported as extra.
SELECT DISTINCT key FROM file_versions
WHERE bucket = %(bucket)s AND state = 'uploaded'
  AND left(key, length(%(prefix)s)) = %(prefix)s;

-- name: prune_versions
-- Retention, one batch of the id order at a time (the primary key; nothing held across
-- batches). A version leaves the ledger only when nothing is left to do for it: uploaded
-- (its file disposed of or kept, its registration sent or none due: a job with a trigger
-- keeps every version not yet in a sent registration, open sessions' included) or
-- superseded, no multipart upload to abort, and older than the cutoff. Failed, pending and
-- uploading versions never leave. Before an uploaded version that is the newest of its
-- path leaves, its signature is kept in path_signatures, so the unchanged file is never
-- queued again. Rows another transaction holds are skipped (SKIP LOCKED), never waited on.
WITH batch AS (
    SELECT id, discovered_at FROM file_versions
    WHERE id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
), eligible AS (
    -- The batch's id range again, as a range (a join to the batch could be planned as a
    -- hash join over the whole table); registrations by primary key.
    SELECT v.id, v.job, v.scope, v.root, v.relpath, v.size, v.mtime_ns, v.inode, v.ctime_ns,
           v.state
    FROM file_versions v
    WHERE v.id > %(after)s AND v.id <= (SELECT max(id) FROM batch)
      AND v.job = ANY(%(jobs)s::text[])
      AND v.multipart_upload_id IS NULL
      AND ((v.state = 'superseded' AND v.updated_at < %(cutoff)s)
           OR (v.state = 'uploaded' AND v.uploaded_at < %(cutoff)s
               AND (v.disposed_at IS NOT NULL OR v.job = ANY(%(keeping)s::text[]))
               AND ((SELECT t.state FROM triggers t WHERE t.id = v.trigger_id) = 'sent'
                    OR (v.trigger_id IS NULL AND NOT v.job = ANY(%(registering)s::text[])))))
    FOR UPDATE OF v SKIP LOCKED
), signatures AS (
    INSERT INTO path_signatures AS p (job, scope, root, relpath, size, mtime_ns, inode,
                                      ctime_ns, version_id)
    SELECT e.job, e.scope, e.root, e.relpath, e.size, e.mtime_ns, e.inode, e.ctime_ns, e.id
    FROM eligible e
    WHERE NOT %(dry_run)s AND e.state = 'uploaded'
      AND NOT EXISTS (SELECT 1 FROM file_versions n
                      WHERE n.job = e.job AND n.scope = e.scope AND n.root = e.root
                        AND n.relpath = e.relpath AND n.id > e.id)
    ON CONFLICT (job, scope, root, relpath) DO UPDATE
    SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
        ctime_ns = excluded.ctime_ns, version_id = excluded.version_id
    WHERE p.version_id < excluded.version_id
), gone AS (
    DELETE FROM file_versions v USING eligible e
    WHERE v.id = e.id AND NOT %(dry_run)s
    RETURNING v.id
)
SELECT (SELECT max(id) FROM batch) AS last_id,
       (SELECT max(discovered_at) FROM batch) AS newest,
       (SELECT count(*) FROM eligible) AS eligible,
       (SELECT count(*) FROM gone) AS deleted;

-- name: prune_attempts
-- Retention of attempt rows, shorter than that of versions: the attempts of finished
-- (uploaded or superseded) versions older than the cutoff, one batch of the id order at a
-- time from where the last run stopped (prune_progress), so each run reads only new rows.
WITH batch AS (
    SELECT id, job, state, updated_at, discovered_at FROM file_versions
    WHERE id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
), old AS (
    SELECT a.id FROM upload_attempts a JOIN batch b ON a.file_version_id = b.id
    WHERE b.state IN ('uploaded', 'superseded') AND b.updated_at < %(cutoff)s
      AND b.job = ANY(%(jobs)s::text[])
), gone AS (
    DELETE FROM upload_attempts a USING old
    WHERE a.id = old.id AND NOT %(dry_run)s
    RETURNING a.id
)
SELECT (SELECT max(id) FROM batch) AS last_id,
       (SELECT max(discovered_at) FROM batch) AS newest,
       (SELECT count(*) FROM old) AS eligible,
       (SELECT count(*) FROM gone) AS deleted;

-- name: prune_progress
SELECT coalesce((SELECT last_id FROM prune_progress WHERE what = %(what)s), 0);

-- name: set_prune_progress
INSERT INTO prune_progress (what, last_id) VALUES (%(what)s, %(last_id)s)
ON CONFLICT (what) DO UPDATE SET last_id = excluded.last_id;

-- name: prune_triggers
-- Sent registrations older than the cutoff whose files have all left, with their calls.
WITH gone AS (
    DELETE FROM triggers WHERE id IN (
        SELECT t.id FROM triggers t
        WHERE t.state = 'sent' AND t.sent_at < %(cutoff)s AND t.job = ANY(%(jobs)s::text[])
          AND NOT EXISTS (SELECT 1 FROM file_versions f WHERE f.trigger_id = t.id)
        ORDER BY t.sent_at
        LIMIT %(limit)s
    )
    RETURNING id
)
SELECT count(*) FROM gone;

-- name: prune_sessions
-- Complete sessions older than the cutoff with no version and no registration left.
WITH old AS (
    SELECT s.id FROM sessions s
    WHERE s.state = 'complete' AND s.completed_at < %(cutoff)s AND s.job = ANY(%(jobs)s::text[])
      AND NOT EXISTS (SELECT 1 FROM file_versions f WHERE f.session_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM triggers t WHERE t.session_id = s.id)
    ORDER BY s.completed_at
    LIMIT %(limit)s
), counts AS (
    DELETE FROM session_state_counts c USING old
    WHERE c.session_id = old.id
), gone AS (
    DELETE FROM sessions s USING old WHERE s.id = old.id RETURNING s.id
)
SELECT count(*) FROM gone;
