-- The ledger: every complete file version, its upload attempts, and the sessions grouping them.

CREATE TABLE sessions (
    id               bigserial PRIMARY KEY,
    job              text        NOT NULL,
    host             text        NOT NULL,
    origin           text        NOT NULL CHECK (origin IN ('daemon', 'upload')),
    -- The daemon groups by session.group_by (a top directory, a day, or '' for "none");
    -- a one-shot `uploaderd upload` run has no group key.
    group_key        text,
    state            text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'complete')),
    opened_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
-- At most one open session per group, so concurrent discoverers share it.
CREATE UNIQUE INDEX sessions_one_open_per_group
    ON sessions (job, group_key) WHERE state = 'open' AND group_key IS NOT NULL;

CREATE TABLE file_versions (
    id               bigserial PRIMARY KEY,
    job              text        NOT NULL,
    -- The host whose roots hold the file, or '' when the job's roots are a shared mount
    -- (then every host running the job may claim it).
    scope            text        NOT NULL,
    host             text        NOT NULL,          -- the host that discovered it
    root             text        NOT NULL,
    relpath          text        NOT NULL,
    size             bigint      NOT NULL CHECK (size >= 0),
    mtime_ns         bigint      NOT NULL,
    inode            bigint      NOT NULL,
    bucket           text        NOT NULL,
    key              text        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'uploading', 'uploaded', 'failed', 'superseded')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    sha256           text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    etag             text,
    session_id       bigint REFERENCES sessions (id),
    claimed_by       text,
    lease_expires_at timestamptz,
    discovered_at    timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    uploaded_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT file_versions_one_row_per_version
        UNIQUE (job, scope, root, relpath, size, mtime_ns, inode)
);
CREATE INDEX file_versions_claimable ON file_versions (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX file_versions_leased ON file_versions (lease_expires_at) WHERE state = 'uploading';
CREATE INDEX file_versions_by_path ON file_versions (job, scope, root, relpath, id);
CREATE INDEX file_versions_by_session ON file_versions (session_id);
CREATE INDEX file_versions_by_job_state ON file_versions (job, state);

CREATE TABLE upload_attempts (
    id              bigserial PRIMARY KEY,
    file_version_id bigint      NOT NULL REFERENCES file_versions (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL,
    host            text        NOT NULL,
    worker          text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    outcome         text CHECK (outcome IN ('uploaded', 'failed', 'changed', 'released', 'expired')),
    error           text,
    bytes           bigint,
    UNIQUE (file_version_id, attempt)
);
