"""`dtools train` (being written)."""

from dtools.errors import DtoolsError


def train() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools train is not implemented yet")
