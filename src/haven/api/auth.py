"""Bearer-token authentication: a read-only token and an admin token.

Reads accept either token; writes need the admin token. No, a malformed or a wrong token -> 401 (who
you are is unknown); the read-only token on a write -> 403 (known, but not allowed). The check runs
before the request body is read, so a refused request changes nothing.
"""
from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from haven.api.context import ApiContext, ApiProblem, context

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`: the read-only "
                    "token for reads, the admin token for everything")


def _token(credentials: HTTPAuthorizationCredentials | None, request: Request) -> str:
    if credentials is None or not credentials.credentials:
        sent = request.headers.get("authorization")
        detail = ("missing credentials: send 'Authorization: Bearer <token>'" if not sent else
                  "malformed Authorization header: expected 'Bearer <token>'")
        raise ApiProblem(401, detail, headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def _matches(token: str, expected: str) -> bool:
    return bool(expected) and secrets.compare_digest(token.encode(), expected.encode())


def require_read(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                 ctx: ApiContext = Depends(context)) -> str:
    """Allow the read-only or the admin token; returns the role ("read" or "admin")."""
    token = _token(credentials, request)
    if _matches(token, ctx.admin_token):
        return "admin"
    if _matches(token, ctx.read_token):
        return "read"
    # An unknown token does not identify anyone: 401, as RFC 6750 asks for invalid_token.
    raise ApiProblem(401, "invalid token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  ctx: ApiContext = Depends(context)) -> str:
    """Allow only the admin token."""
    if require_read(request, credentials, ctx) == "read":
        raise ApiProblem(403, "this token may only read: changes need the admin token")
    return "admin"
