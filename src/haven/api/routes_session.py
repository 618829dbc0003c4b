"""`GET /api/v1/session`: what the caller's token may do, so a client (the dashboard) shows only
the actions it can take instead of offering buttons the API would refuse with 403."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from haven.api.auth import require_read
from haven.api.schemas import ERRORS

router = APIRouter(prefix="/api/v1", responses=ERRORS)


class SessionOut(BaseModel):
    role: Literal["read", "admin"] = Field(description="read: the read-only token; admin: every action")
    can_write: bool = Field(description="may this token start, stop, migrate, drain, resume, acknowledge")


@router.get("/session", response_model=SessionOut, tags=["read"])
def get_session(role: str = Depends(require_read)) -> SessionOut:
    """The role of the token sent: either token may ask."""
    return SessionOut(role="admin" if role == "admin" else "read", can_write=role == "admin")
