"""The query and path parameters the routers share, as ``Annotated`` types with their checks.

Module level, because the routers use postponed annotations, which FastAPI resolves in module globals.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import AwareDatetime

__all__ = ["MAX_LIMIT", "Cursor", "DbId", "DetectorFilter", "Limit", "ModelFilter", "Since", "Until"]

MAX_LIMIT = 1000

DbId = Annotated[int, Path(ge=1, lt=2**63, description="a database id")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
# Names as the API allows them: a NUL byte or other control characters never reach SQL (PostgreSQL
# refuses NUL in text parameters, which would otherwise be a 500).
ModelFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="a model id")]
DetectorFilter = Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,64}$", description="a detector id")]
Cursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{1,200}$",
        description="opaque: a next_cursor of the previous page, passed back unchanged (422 otherwise)",
    ),
]
Since = Annotated[AwareDatetime | None, Query(description="RFC 3339 with an offset, inclusive")]
Until = Annotated[AwareDatetime | None, Query(description="RFC 3339 with an offset, exclusive")]
