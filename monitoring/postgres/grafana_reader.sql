-- A login role for Grafana that may read the grafana_* views and nothing else.
-- Run as the owner of the uploaderd schema after `uploaderd migrate`, and again after an
-- upgrade adds views (idempotent):
--   psql -v reader_password="$GRAFANA_READER_PASSWORD" -f grafana_reader.sql uploaderd
-- A view reads its tables with its owner's rights, so no grant on the tables is needed.

SELECT format('CREATE ROLE grafana_reader LOGIN PASSWORD %L', :'reader_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') \gexec

ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '30s';
SELECT format('GRANT CONNECT ON DATABASE %I TO grafana_reader', current_database()) \gexec
GRANT USAGE ON SCHEMA public TO grafana_reader;

SELECT format('GRANT SELECT ON %I.%I TO grafana_reader', schemaname, viewname)
FROM pg_views
WHERE schemaname = 'public' AND viewname LIKE 'grafana\_%' \gexec
