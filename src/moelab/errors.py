"""The one exception type for problems a user can cause and fix.

The CLI prints it as a single line (``error: ...``) and exits with code 2. Library code raises it
for bad configs, missing or corrupt files and wrong schemas; anything else is a bug and keeps its
traceback.
"""


class MoelabError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


EXIT_USER_ERROR = 2
