"""What the ``sentinel`` commands do, one module per concern; :mod:`monitor.cli` parses and dispatches.

- :mod:`~monitor.cli_commands.database`: the database URL a command uses, checked before anything connects,
  and opening an existing database for a command that only reads;
- :mod:`~monitor.cli_commands.history`: ``alerts`` and ``dead-letters``, the stored history as a table or
  JSON;
- :mod:`~monitor.cli_commands.replay`: ``replay``, a JSONL file through the pipeline.

Only ``replay`` imports the pipeline (and with it the detectors, torch and scipy); the others stay light so
that they answer at once.
"""

from __future__ import annotations

from monitor.errors import SentinelError

__all__ = ["CommandError"]


class CommandError(SentinelError):
    """A command cannot run as asked; the message names what is wrong and what to do (exit status 2)."""
