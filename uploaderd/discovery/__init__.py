"""Finding complete files: watches, scans, settling, enqueueing new versions."""
