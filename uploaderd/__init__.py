"""uploaderd: watch folders, record every complete file in PostgreSQL, ship it to S3."""

__version__ = "0.1.0"
