"""`dtools noise` (being written)."""

from dtools.errors import DtoolsError


def noise() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools noise is not implemented yet")
