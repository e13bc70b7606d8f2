"""``python -m lenscat.cli``."""

from lenscat.cli.main import main

main()
