"""The ``lenscat`` command line: thin shells over the domain services, one module per domain."""

from lenscat.cli.main import cli, main

__all__ = ["cli", "main"]
