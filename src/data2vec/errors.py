"""The one exception type a user can cause.

Anything raised as :class:`Data2VecError` is a problem with the user's input (a config key, a data path, a
checkpoint) and its message names that input and the fix. The CLI prints the message on one line and exits
with status 2; any other exception is a bug of ours and keeps its traceback.
"""


class Data2VecError(Exception):
    """A user-facing error whose message names the bad input and how to fix it."""
