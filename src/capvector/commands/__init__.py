"""The command line's commands, one module per group; `capvector.cli` builds the app from them.

Commands parse options, call the library and print; no library package imports this one.
"""
