"""What an operator sees: Prometheus metrics, logs, progress on a terminal."""
