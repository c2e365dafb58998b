-- The grafana_* views at a year of history: every dashboard query reads the rows of its
-- time window, or the live rows, through an index (docs/observability.md).
--
-- Each view keeps its name, columns and types, so CREATE OR REPLACE keeps the grants of
-- monitoring/postgres/grafana_reader.sql. What changed, and why:
--
-- * Hourly views group on the UTC hour, date_trunc('hour', ts AT TIME ZONE 'UTC')
--   AT TIME ZONE 'UTC', instead of date_trunc('hour', ts). PostgreSQL pushes a filter on
--   a grouping column into the view, but an index can only hold an immutable expression,
--   and date_trunc on a timestamptz depends on the session's TimeZone. The UTC hour is
--   immutable, so the indexes below turn $__timeFilter(hour) into an index range scan.
--   (The hours are the same in every time zone whose offset is whole hours.)
-- * The queue, the job summary and the sessions' counts read the counters of
--   0005_live_work.sql instead of aggregating every version ever recorded; ages of the
--   oldest waiting file come from the live-work index.
-- * Sessions and registrations get an index on the time column the dashboard filters.
-- * grafana_failures is unchanged: its WHERE (failed, or pending with an error) already
--   reads the live rows only, through file_versions_live.

CREATE INDEX file_versions_uploaded_hour
    ON file_versions ((date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
    WHERE state = 'uploaded';
CREATE INDEX upload_attempts_started_hour
    ON upload_attempts ((date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'));
CREATE INDEX trigger_calls_started_hour
    ON trigger_calls ((date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'));
CREATE INDEX sessions_opened_at ON sessions (opened_at);
CREATE INDEX triggers_created_at ON triggers (created_at);

-- Files and bytes uploaded, per UTC hour and job.
CREATE OR REPLACE VIEW grafana_throughput_hourly AS
SELECT date_trunc('hour', uploaded_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       job,
       count(*)                 AS files,
       sum(size)::bigint        AS bytes
FROM file_versions
WHERE state = 'uploaded' AND uploaded_at IS NOT NULL
GROUP BY 1, 2;

-- Discovered → uploaded latency (what a user waits for), percentiles per UTC hour and job.
-- Includes settle, queueing, retries and the transfer itself.
CREATE OR REPLACE VIEW grafana_upload_latency_hourly AS
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

-- Upload attempts per UTC hour, job and outcome. Only the attempts in the hours asked for
-- are read; each finds its job through the primary key of file_versions.
CREATE OR REPLACE VIEW grafana_attempts_hourly AS
SELECT date_trunc('hour', a.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       f.job,
       coalesce(a.outcome, 'running')   AS outcome,
       count(*)                         AS attempts,
       coalesce(sum(a.bytes), 0)::bigint AS bytes
FROM upload_attempts a
JOIN file_versions f ON f.id = a.file_version_id
GROUP BY 1, 2, 3;

-- Registration calls per UTC hour, job and HTTP status class.
CREATE OR REPLACE VIEW grafana_trigger_calls_hourly AS
SELECT date_trunc('hour', c.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       t.job,
       CASE WHEN c.finished_at IS NULL THEN 'running'
            WHEN c.status IS NULL THEN 'no response'
            ELSE (c.status / 100)::text || 'xx' END AS result,
       count(*) AS calls
FROM trigger_calls c
JOIN triggers t ON t.id = c.trigger_id
GROUP BY 1, 2, 3;

-- The queue now: files and bytes per job and state, from the counters, and the oldest file
-- still waiting in each live state (pending, uploading, failed), from the live index. The
-- oldest of the uploaded and superseded files is history: NULL here.
CREATE OR REPLACE VIEW grafana_queue_by_state AS
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

-- The per-job table: backlog, failures, last success, from the counters.
CREATE OR REPLACE VIEW grafana_job_summary AS
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

-- One row per session: progress from the counters, duration, and its registration. A
-- filter on the session's columns (opened_at on the dashboard) reaches sessions' indexes;
-- each session then reads its own counters only.
CREATE OR REPLACE VIEW grafana_sessions AS
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
