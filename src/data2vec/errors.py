"""The exceptions the CLI turns into exit statuses: the one type a user can cause, and a pre-emption.

Anything raised as :class:`Data2VecError` is a problem with the user's input (a config key, a data path, a
checkpoint) and its message names that input and the fix. The CLI prints the message on one line and exits
with status 2; any other exception is a bug of ours and keeps its traceback.
"""


class Data2VecError(Exception):
    """A user-facing error whose message names the bad input and how to fix it."""


class Preempted(Exception):
    """A run stopped by SIGTERM / SIGINT after writing its checkpoint: not an error, so not a
    :class:`Data2VecError`; the CLI exits with status 75 and running the command again continues the run."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by a signal after step {step}; checkpoint written")
        self.step = step
