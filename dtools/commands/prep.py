"""`dtools prep` (being written)."""

from dtools.errors import DtoolsError


def prep() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools prep is not implemented yet")
