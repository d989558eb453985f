"""The project's user-facing error: the CLI prints its message on one line and exits non-zero."""


class LigerError(Exception):
    """A problem the user can fix; the message names it and says what to do."""
