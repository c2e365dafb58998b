-- The ctime joins the signature of a file version.
--
-- Every write changes a file's ctime and nothing can set it back, so a file rewritten in
-- place with its size kept and its mtime restored (`cp -p`, `tar`, `rsync --inplace -t`)
-- is a new version, uploaded again, and `after_upload` never deletes or moves it as the old
-- one. Rows written before this migration keep a NULL ctime, which matches any ctime
-- (known_paths, enqueue_versions, the upload's unchanged-file check, disposal), and takes the
-- ctime of its file at discovery's first look (known_paths): upgrading uploads nothing again.
--
-- Cost: the two columns are instant (nullable, no default: only the catalog changes). The
-- unique index with the ctime is a full build over file_versions, during which writes wait
-- (4.4 to 4.6 s per million rows measured; docs/install.md, "Upgrading a large ledger",
-- shows how to build it beforehand with CONCURRENTLY while the daemons run: this file then
-- finds it and only swaps the constraint, in a fraction of a second).
--
-- The constraint keeps its name, so a daemon of the previous release that still runs during
-- a rolling upgrade keeps working (it records versions without a ctime).

ALTER TABLE file_versions ADD COLUMN IF NOT EXISTS ctime_ns bigint;
ALTER TABLE path_signatures ADD COLUMN IF NOT EXISTS ctime_ns bigint;

-- An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind: build it again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = 'file_versions_one_row_per_version_0008'
                 AND NOT i.indisvalid) THEN
        DROP INDEX file_versions_one_row_per_version_0008;
    END IF;
END $$;

CREATE UNIQUE INDEX IF NOT EXISTS file_versions_one_row_per_version_0008
    ON file_versions (job, scope, root, relpath, size, mtime_ns, inode, ctime_ns);

-- The old constraint would refuse the rewritten version (same size, mtime and inode), so it
-- goes; the new index takes its name and becomes the constraint (a catalog change, no
-- second build). Its prefix serves every lookup the old one served.
ALTER TABLE file_versions DROP CONSTRAINT file_versions_one_row_per_version;
ALTER TABLE file_versions ADD CONSTRAINT file_versions_one_row_per_version
    UNIQUE USING INDEX file_versions_one_row_per_version_0008;
