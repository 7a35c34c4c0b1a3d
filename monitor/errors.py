"""Sentinel's error hierarchy. Third-party errors are mapped where they enter (``raise ... from exc``).

SentinelError
├── ConfigError        bad or missing configuration, found at start; names the key and the reason
├── IntakeError        one message that cannot be accepted; it goes to the dead-letter store
├── StorageError       (re-exported from :mod:`storage.errors`; StorageUnavailable is retried)
└── DeliveryError      a webhook or topic delivery that failed; ``retryable`` says whether to try again
"""

from __future__ import annotations


class SentinelError(Exception):
    """Root of every error Sentinel raises on purpose."""


class ConfigError(SentinelError):
    """The configuration is invalid. ``problems`` holds one ``(key path, reason)`` per fault."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        super().__init__(f"invalid configuration:\n{lines}")


class IntakeError(SentinelError):
    """A message was rejected; ``reason`` is what the dead-letter store records."""

    def __init__(self, reason: str, model: str | None = None) -> None:
        self.reason = reason
        self.model = model
        super().__init__(reason)


class DeliveryError(SentinelError):
    """A notification could not be delivered."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)
