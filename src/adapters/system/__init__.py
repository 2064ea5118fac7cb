"""The machine's own services, used by every deployed family: the system clock, random run
ids, and run events as structured log lines."""
