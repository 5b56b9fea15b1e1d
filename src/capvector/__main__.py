"""`python -m capvector ...`: the same command line as the `capvector` script."""

from capvector.cli import main

main()
