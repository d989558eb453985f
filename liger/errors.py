"""The project's user-facing errors: the CLI prints their message on one line and exits non-zero."""


class LigerError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class TrainError(LigerError):
    """A training run (or the data it reads) cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainError):
    """The loss (or gradient norm) became NaN or infinite."""
