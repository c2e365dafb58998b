"""The ledger in PostgreSQL: the only package that talks to the database."""
