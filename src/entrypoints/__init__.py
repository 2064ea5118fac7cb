"""The ways in: Lambda handlers, the workflow container, the command line."""
