"""User-facing errors: one line naming the flag (or file) and the fix; scripts print them without a traceback."""


class UserError(Exception):
    """Bad input from the user (a flag, a data file, an output folder)."""


class DataError(UserError):
    """A dataset that is missing, truncated, corrupt or of the wrong layout."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or update."""


class Interrupted(Exception):
    """The run stopped on SIGINT / SIGTERM after saving a checkpoint; `signal` is the signal's name."""

    def __init__(self, signal: str, message: str):
        super().__init__(message)
        self.signal = signal
