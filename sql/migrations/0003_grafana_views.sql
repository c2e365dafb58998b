-- Read-only views for Grafana's PostgreSQL datasource (docs/observability.md).
--
-- Dashboards query these instead of the tables, so a schema change rewrites a view, not
-- every panel, and a reader role can be granted SELECT on grafana_* alone. Durations are
-- float8 seconds, sizes bytes; time columns are timestamptz for $__timeFilter(). Hourly
-- views group on a truncated timestamp: filter on that column to keep scans short.

-- Files and bytes uploaded, per hour and job.
CREATE VIEW grafana_throughput_hourly AS
SELECT date_trunc('hour', uploaded_at) AS hour,
       job,
       count(*)                 AS files,
       sum(size)::bigint        AS bytes
FROM file_versions
WHERE state = 'uploaded' AND uploaded_at IS NOT NULL
GROUP BY 1, 2;

-- The queue now: files and bytes per job and state, and the oldest entry of each.
CREATE VIEW grafana_queue_by_state AS
SELECT job,
       state,
       count(*)                                               AS files,
       sum(size)::bigint                                      AS bytes,
       min(discovered_at)                                     AS oldest_discovered_at,
       extract(epoch FROM now() - min(discovered_at))::float8 AS oldest_age_seconds
FROM file_versions
GROUP BY job, state;

-- Discovered → uploaded latency (what a user waits for), percentiles per hour and job.
-- Includes settle, queueing, retries and the transfer itself.
CREATE VIEW grafana_upload_latency_hourly AS
SELECT date_trunc('hour', uploaded_at) AS hour,
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
-- by the error text (which names the S3 code or the local cause, never a secret).
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

-- Upload attempts per hour, job and outcome: the error rate over time, by cause.
CREATE VIEW grafana_attempts_hourly AS
SELECT date_trunc('hour', a.started_at) AS hour,
       f.job,
       coalesce(a.outcome, 'running')   AS outcome,
       count(*)                         AS attempts,
       coalesce(sum(a.bytes), 0)::bigint AS bytes
FROM upload_attempts a
JOIN file_versions f ON f.id = a.file_version_id
GROUP BY 1, 2, 3;

-- One row per session: progress, duration and its registration.
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
       count(f.id)                                              AS files,
       coalesce(sum(f.size), 0)::bigint                         AS bytes,
       count(f.id) FILTER (WHERE f.state = 'uploaded')          AS uploaded,
       count(f.id) FILTER (WHERE f.state IN ('pending', 'uploading')) AS pending,
       count(f.id) FILTER (WHERE f.state = 'failed')            AS failed,
       (SELECT t.state FROM triggers t WHERE t.session_id = s.id
        ORDER BY t.id DESC LIMIT 1)                             AS trigger_state
FROM sessions s
LEFT JOIN file_versions f ON f.session_id = s.id
GROUP BY s.id;

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

-- Registration calls per hour, job and HTTP status class ('2xx', '5xx', 'no response').
CREATE VIEW grafana_trigger_calls_hourly AS
SELECT date_trunc('hour', c.started_at) AS hour,
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

-- The per-job table: backlog, failures, last success.
CREATE VIEW grafana_job_summary AS
SELECT job,
       count(*) FILTER (WHERE state = 'pending')   AS pending,
       count(*) FILTER (WHERE state = 'uploading') AS uploading,
       count(*) FILTER (WHERE state = 'uploaded')  AS uploaded,
       count(*) FILTER (WHERE state = 'failed')    AS failed,
       coalesce(sum(size) FILTER (WHERE state IN ('pending', 'uploading')), 0)::bigint
                                                   AS backlog_bytes,
       extract(epoch FROM now() - min(discovered_at) FILTER (WHERE state = 'pending'))::float8
                                                   AS oldest_pending_age_seconds,
       max(uploaded_at)                            AS last_uploaded_at
FROM file_versions
GROUP BY job;
