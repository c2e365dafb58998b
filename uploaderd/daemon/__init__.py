"""The long-running service: start-up, reloads, scheduled sweeps, triggers, disposal."""
