"""Silences: list them (read scope), create and delete them (admin scope)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from monitor.api.dependencies import ADMIN, ADMIN_ERRORS, READ, READ_ERRORS, AlertStoreDep
from monitor.api.errors import body_error
from monitor.api.params import DbId
from monitor.api.schemas import ErrorOut, SilenceCreate, SilenceList, SilenceOut
from storage import SilenceIn

__all__ = ["router"]

router = APIRouter(tags=["silences"])


@router.get("/v1/silences", response_model=SilenceList, dependencies=READ, responses=READ_ERRORS)
def list_silences(
    alert_store: AlertStoreDep,
    active: Annotated[bool, Query(description="only the silences in force now")] = False,
) -> SilenceList:
    """Silences in id order."""
    rows = alert_store.silences(active_at=datetime.now(UTC) if active else None)
    return SilenceList(items=[SilenceOut.of(s) for s in rows])


@router.post(
    "/v1/silences",
    response_model=SilenceOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=ADMIN,
    responses=ADMIN_ERRORS,
)
def create_silence(body: SilenceCreate, alert_store: AlertStoreDep) -> SilenceOut:
    """Create a silence (admin)."""
    try:
        # The body's fields are the matchers and times of SilenceIn under the same names.
        wanted = SilenceIn(**body.model_dump(), created_by="api")
        created = alert_store.create_silence(wanted, datetime.now(UTC))
    except ValueError as exc:
        raise body_error(exc) from None
    return SilenceOut.of(created)


@router.delete(
    "/v1/silences/{silence_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=ADMIN,
    responses={**ADMIN_ERRORS, 404: {"model": ErrorOut, "description": "no such silence"}},
)
def delete_silence(silence_id: DbId, alert_store: AlertStoreDep) -> Response:
    """Delete a silence (admin)."""
    if not alert_store.delete_silence(silence_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no silence with id {silence_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
