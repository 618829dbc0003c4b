"""Liveness and readiness without a token: for load balancers and `haven` clients probing."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from haven.api.context import ApiContext, ApiProblem, context, first_line
from haven.api.schemas import Problem
from haven.ports.store import StoreError

router = APIRouter()


class Health(BaseModel):
    status: str
    cluster: str
    store: str


@router.get("/healthz", response_model=Health, tags=["health"],
            responses={503: {"model": Problem, "description": "the store is unreachable"}})
def healthz(ctx: ApiContext = Depends(context)) -> Health:
    """200 when the API runs and reaches the store, 503 otherwise."""
    try:
        ctx.get(ctx.layout.config())
    except StoreError as error:
        ctx.count_store_error()
        raise ApiProblem(503, f"the store is unreachable: {first_line(error)}") from None
    return Health(status="ok", cluster=ctx.layout.cluster, store="reachable")
