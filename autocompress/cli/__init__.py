"""The ``autocompress`` command (``autocompress.cli:app``)."""

from autocompress.cli.app import app

__all__ = ["app"]
