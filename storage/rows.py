"""The one way a stored row becomes a record: by the record's dataclass fields.

ORM objects (``session.scalars(select(orm.X))``) and Core rows (``session.execute(select(TABLE))``)
both answer ``getattr(row, column)``, so a record whose field names are column names is filled
field by field without writing the fields out. A field that is not a plain column (a joined or
computed value) is passed as an override.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["record_from_row", "record_values"]

R = TypeVar("R")


# Read once per record type: the conversion runs for every row of every listing.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(record_type: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(record_type)
    if names is None:
        names = _FIELD_NAMES[record_type] = tuple(f.name for f in fields(record_type))
    return names


def record_from_row(record_type: type[R], row: Any, **overrides: Any) -> R:
    """A ``record_type`` dataclass from ``row``'s attributes of the same names, ``overrides`` winning.

    Example::

        record_from_row(DeadLetter, session.get_one(orm.DeadLetter, 1))
        record_from_row(DeliveryJob, row, subscription_name=row.sub_name)
    """
    values = {
        name: overrides[name] if name in overrides else getattr(row, name)
        for name in _field_names(record_type)
    }
    return record_type(**values)


def record_values(record: Any, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A record's fields as column values (a shallow copy, unlike :func:`dataclasses.asdict`)."""
    return {name: getattr(record, name) for name in _field_names(type(record)) if name not in exclude}
