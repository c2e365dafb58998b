-- Cluster-wide leases, as rows: whose turn it is to run a sweep (one host at a time), and
-- which host discovers a shared job's roots (one at a time, so a file of a shared root is
-- looked up and queued once, not once per host).
--
-- They were session-level advisory locks, which live in one server session: through
-- PgBouncer's transaction pooling each transaction may run in another, so a lock taken in
-- one could not be released in the next. A lease row holds across any pooling. A holder
-- that dies leaves its lease to expire, or to the next daemon of its own host, which frees
-- the leases of dead processes at once (as it does their claims).
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,  -- host:pid:token of the holding process
    host       text        NOT NULL,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 50);  -- renewals update expires_at only: in place (HOT), no index touched
