"""The ``autocompress`` command (``autocompress.cli:app``): ``app`` is built in ``cli.app``;
importing the command modules registers their commands on it."""

from autocompress.cli import bundle, read, search  # noqa: F401 (they register their commands)
from autocompress.cli.app import app

__all__ = ["app"]
