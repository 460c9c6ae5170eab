"""The one exception type that the command line turns into `Error: ...` and exit 1."""


class DtoolsError(Exception):
    """A problem with the user's input or environment, stated in one line.

    Core modules raise it for anything a user can cause (a missing file, a bad schedule, a
    foreign checkpoint); the CLI prints ``Error: <message>`` on stderr and exits 1. Internal
    invariants use ``assert`` instead.
    """
