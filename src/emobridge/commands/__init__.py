"""Command-line sub-commands, one module per group (registered in :mod:`emobridge.cli`)."""
