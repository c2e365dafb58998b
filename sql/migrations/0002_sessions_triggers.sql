-- Sessions that close, the trigger outbox, after-upload disposal and destination health.

ALTER TABLE sessions
    ADD COLUMN closed_reason text CHECK (closed_reason IN ('idle', 'marker', 'run'));

-- A manual `uploaderd retry` gives a failed version a fresh set of attempts without
-- renumbering its attempt history: the policy counts attempts - retry_base.
ALTER TABLE file_versions
    ADD COLUMN retry_base integer NOT NULL DEFAULT 0;

-- The outbox: one registration call to make, written in the same transaction as what it
-- registers (a completed session, or a batch of uploaded files).
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
CREATE INDEX triggers_due ON triggers (job, next_attempt_at) WHERE state = 'pending';
CREATE INDEX triggers_by_session ON triggers (session_id);

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

ALTER TABLE file_versions
    ADD COLUMN trigger_id    bigint REFERENCES triggers (id),  -- the registration carrying it
    ADD COLUMN registered_at timestamptz,                      -- when that call succeeded
    ADD COLUMN disposed_at   timestamptz,                      -- after_upload done
    ADD COLUMN disposition   text;                             -- deleted, moved to ..., skipped: why
CREATE INDEX file_versions_unregistered ON file_versions (job, id)
    WHERE state = 'uploaded' AND trigger_id IS NULL;
CREATE INDEX file_versions_undisposed ON file_versions (job, id)
    WHERE state = 'uploaded' AND disposed_at IS NULL;
CREATE INDEX file_versions_by_trigger ON file_versions (trigger_id);

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
