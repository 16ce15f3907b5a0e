"""The one exception type users see.

Every mistake a user can make (a bad path, a bad config value, a malformed data row) is raised as
`LoraRlhfError` with a single line naming the file, row, key or value at fault. The CLI prints that
line and exits 2 instead of showing a stack trace; library users can catch it.
"""


class LoraRlhfError(Exception):
    """A user-facing error whose message is one line naming what is at fault."""
