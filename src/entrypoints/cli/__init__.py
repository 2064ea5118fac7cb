"""The command line (``obp-workflow``): ``main.py`` is the parser; each module registers its
commands' arguments and runs them."""
