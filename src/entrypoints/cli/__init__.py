"""The command line (``obp-workflow``): ``main.py`` reads the arguments, one module a command."""
