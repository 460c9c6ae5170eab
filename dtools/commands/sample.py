"""`dtools sample` (being written)."""

from dtools.errors import DtoolsError


def sample() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools sample is not implemented yet")
