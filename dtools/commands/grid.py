"""`dtools grid` (being written)."""

from dtools.errors import DtoolsError


def grid() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools grid is not implemented yet")
