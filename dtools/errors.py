"""The one exception type that the command line turns into `Error: ...` and exit 1, and the two ways
dtools shortens a library's exception into the tail of such a line."""


class DtoolsError(Exception):
    """A problem with the user's input or environment, stated in one line.

    Core modules raise it for anything a user can cause (a missing file, a bad schedule, a
    foreign checkpoint); the CLI prints ``Error: <message>`` on stderr and exits 1. Internal
    invariants use ``assert`` instead.
    """


class OptionError(DtoolsError):
    """A bad option value, found by core validation: the CLI reports it as a usage error (exit 2)
    naming `option`, exactly as Click reports a value it refuses itself."""

    def __init__(self, option: str, message: str):
        super().__init__(f"invalid value for {option}: {message}")
        self.option, self.message = option, message


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def mismatch_detail(e: BaseException, limit: int = 160) -> str:
    """What torch's `load_state_dict` complains about: its first specific line (the first line is
    a generic heading, 'Error(s) in loading state_dict for ...')."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return (lines[1] if len(lines) > 1 else lines[0])[:limit]


def brief(value: object, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: a crafted file's values can be megabytes long, and an error
    message quotes them."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
