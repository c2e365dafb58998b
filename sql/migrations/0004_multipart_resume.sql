-- Large files resume: the multipart upload in progress for a version, recorded as soon as it
-- is created, so an attempt after a crash continues it instead of starting over.
ALTER TABLE file_versions
    ADD COLUMN multipart_upload_id text,
    ADD COLUMN multipart_part_size bigint CHECK (multipart_part_size > 0);
