"""Runs in SQLite: the run repository of one machine (a file, WAL, conditional saves)."""
