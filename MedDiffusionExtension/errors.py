"""The two exceptions a user of the backend must handle: bad input and cancellation."""


class InputError(ValueError):
    """Input the user can fix (a missing file, a 2D volume, an unknown model...).

    The message is one line that says what is wrong and what to do; the CLI prints it as `error: <message>`.
    """


class Cancelled(RuntimeError):
    """The run was cancelled through its CancelToken; nothing was written."""

    def __init__(self, message: str = "cancelled by the user; nothing was written"):
        super().__init__(message)
