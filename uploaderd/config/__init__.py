"""The daemon config and job files: dataclasses, loading, validation."""
