"""The ``cordiale`` command line: one module per command group."""
