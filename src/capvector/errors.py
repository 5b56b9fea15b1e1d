"""One exception type for every user-facing failure, so the CLI can print it and exit non-zero."""


class CapvectorError(Exception):
    """A problem with the user's input or environment, with a message that names file, key and values."""
