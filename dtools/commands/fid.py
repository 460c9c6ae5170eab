"""`dtools fid` (being written)."""

from dtools.errors import DtoolsError


def fid() -> None:
    """Not yet implemented."""
    raise DtoolsError("dtools fid is not implemented yet")
