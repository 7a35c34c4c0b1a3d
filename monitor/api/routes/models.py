"""``GET /v1/models``: each monitored model with its latest reference, last window and runtime view."""

from __future__ import annotations

from fastapi import APIRouter

from monitor.api.dependencies import READ, READ_ERRORS, QueriesDep, RuntimeDep, StoreDep
from monitor.api.schemas import LastWindowOut, ModelList, ModelOut, ReferenceOut
from storage import Store
from storage.queries import ModelRow

__all__ = ["router"]

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, dependencies=READ, responses=READ_ERRORS)
def list_models(store: StoreDep, queries: QueriesDep, status_now: RuntimeDep) -> ModelList:
    """Monitored models: the latest reference, the last stored window and the daemon's runtime view."""
    items = []
    for row in queries.models():
        live = None if status_now is None else status_now.models.get(row.name)
        items.append(
            ModelOut(
                name=row.name,
                registered_at=row.created_at,
                reference=_reference(row),
                last_window=_last_window(store, row.name),
                runtime=None if live is None else dict(live),
            )
        )
    return ModelList(items=items)


def _reference(row: ModelRow) -> ReferenceOut | None:
    if row.reference_id is None:
        return None
    return ReferenceOut(
        id=row.reference_id,
        source=row.reference_source or "",
        content_hash=row.reference_hash or "",
        n_events=row.reference_events or 0,
        created_at=row.reference_created_at or row.created_at,
    )


def _last_window(store: Store, model: str) -> LastWindowOut | None:
    last = store.windows(model, limit=1)
    return LastWindowOut.of(last[0]) if last else None
