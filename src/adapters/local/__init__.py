"""Adapters for running on one machine: the system clock, random ids, log-based events."""
