"""The one error type for bad input: caught by the CLI, printed in one line, exit code 2."""


class UsageError(ValueError):
    """Bad input; the message says what to change. Raised before anything is computed or written."""
