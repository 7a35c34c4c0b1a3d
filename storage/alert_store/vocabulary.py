"""The vocabularies of alerting (severities, states, formats, ...) and the check that a value is in one."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ALERT_STATES",
    "CHANNELS",
    "DELIVERY_STATES",
    "FORMATS",
    "REASONS",
    "SEVERITIES",
    "one_of",
]

SEVERITIES = ("info", "warning", "critical")  # in increasing order
ALERT_STATES = ("firing", "resolved")
FORMATS = ("native", "slack", "alertmanager")
CHANNELS = ("webhook", "kafka")
REASONS = ("firing", "escalated", "repeat", "resolved")
DELIVERY_STATES = ("pending", "delivered", "failed")


def one_of(value: str, allowed: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)} (got {value!r})")
