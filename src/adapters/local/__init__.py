"""The embedded one-machine family's adapters: state in one folder (OBP_HOME)."""
