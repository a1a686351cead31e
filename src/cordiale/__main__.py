"""``python -m cordiale`` is the ``cordiale`` command."""

from cordiale.cli.app import main

main()
