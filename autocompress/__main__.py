"""``python -m autocompress`` is the ``autocompress`` command."""

from autocompress.cli import app

app(prog_name="autocompress")
