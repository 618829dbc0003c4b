"""The API application: routes, error answers, the dashboard's static files."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from haven.api import (
    health,
    metrics,
    routes_plan,
    routes_pools,
    routes_read,
    routes_services,
    routes_session,
    routes_sim,
    routes_stream,
    routes_write,
)
from haven.api.context import ApiContext, ApiProblem, SimControl, first_line
from haven.api.docs import install_docs
from haven.api.schemas import (
    POOL_SPEC_UPDATE,
    SERVICE_SPEC_UPDATE,
    SPEC_UPDATE,
    DrainIn,
    FaultIn,
    MigrateIn,
    Problem,
    PromoteIn,
    ServiceMoveIn,
    TopologyIn,
)
from haven.model.service import ServiceSpec
from haven.model.spec import PoolSpec, VmSpec
from haven.ports.fencer import Fencer
from haven.ports.store import Store, StoreError
from haven.runtime.layout import Layout

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
BODY_MODELS = (VmSpec, ServiceSpec, MigrateIn, ServiceMoveIn, FaultIn, DrainIn,
               TopologyIn, PoolSpec, PromoteIn)  # bodies read by api.bodies, documented by hand


def _problem(status: int, detail: str, problems: list[str] | None = None,
             headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "problems": problems or []}, status_code=status,
                        headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("query", "path", "header", "body", "cookie") \
        else [str(p) for p in loc]
    return ".".join(parts) or "(request)"


def _allowed_methods(app: FastAPI, request: Request, exc: StarletteHTTPException) -> list[str]:
    """Every method served at this path. Starlette's 405 names only the methods of the first route
    matching the path, and a path such as /api/v1/vms is served by two routers: add the methods the
    OpenAPI document lists for every path template the request's path fits."""
    methods = {m.strip().upper() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "/".join("[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/"))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations if m.upper() in HTTP_METHODS}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return sorted(methods)


def _install_error_handlers(app: FastAPI, ctx: ApiContext) -> None:
    @app.exception_handler(ApiProblem)
    async def api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), exc.problems, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            allowed = _allowed_methods(app, request, exc)
            return _problem(405, f"{request.method} is not allowed here: use {', '.join(allowed)}",
                            headers={"Allow": ", ".join(allowed)})
        return _problem(exc.status_code, str(exc.detail), None, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_field(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        n = len(problems)
        return _problem(422, f"the request is not valid ({n} problem{'s' if n != 1 else ''})", problems)

    @app.exception_handler(StoreError)
    async def store_problem(request: Request, exc: StoreError) -> JSONResponse:
        ctx.count_store_error()
        return _problem(503, f"the coordination store cannot be used: {first_line(exc)}; "
                             "retry when it is reachable again")


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _declare_problems(schema: dict[str, Any]) -> None:
    """FastAPI documents its own validation error for 422; haven answers every error, 422 included,
    with a `Problem` (see `_install_error_handlers`), so say that instead."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None:
                answer["content"] = {"application/json": {"schema": PROBLEM_REF}}
                if answer.get("description") == "Validation Error":
                    answer["description"] = "invalid request: one line per problem"
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))


def _spec_update(spec: dict[str, Any], title: str) -> dict[str, Any]:
    """A spec as PUT /vms/{name} or /services/{name} reads it: `name` is read-only (the URL names
    the VM or service; a `name` sent back unchanged is accepted, any other is refused), so a
    schema-valid body never carries a name that differs from the URL's."""
    update = copy.deepcopy(spec)
    update["title"] = title
    update["properties"]["name"] = {**update["properties"]["name"], "readOnly": True,
                                    "description": "taken from the URL"}
    update["required"] = [field for field in update.get("required", []) if field != "name"]
    if not update["required"]:
        del update["required"]
    return update


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, extra = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                          ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in extra.get("$defs", {}).items():
                components.setdefault(name, definition)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})
            components[SPEC_UPDATE] = _spec_update(components["VmSpec"], SPEC_UPDATE)
            components[SERVICE_SPEC_UPDATE] = _spec_update(components["ServiceSpec"], SERVICE_SPEC_UPDATE)
            components[POOL_SPEC_UPDATE] = _spec_update(components["PoolSpec"], POOL_SPEC_UPDATE)
            _declare_problems(schema)
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def create_app(store: Store, layout: Layout, *, admin_token: str, read_token: str,
               clock: Callable[[], float], on_write: Callable[[], None] | None = None,
               sim_control: SimControl | None = None, power: Fencer | None = None) -> FastAPI:
    """The haven API over `store`. It reads the store and writes intent only.

    `clock` gives the time shown in the summary (virtual time in a simulation); `on_write` is
    called after every accepted write (e.g. to wake a loop); `sim_control` adds `/api/v1/sim/...`;
    `power`, the fence devices of the node serving the API, lets an operator power a host on.
    """
    if not admin_token:
        raise ValueError("admin_token must not be empty")
    ctx = ApiContext(store=store, layout=layout, clock=clock, admin_token=admin_token,
                     read_token=read_token, on_write=on_write, sim_control=sim_control,
                     power=power)
    app = FastAPI(title="haven", version="1", docs_url=None, redoc_url=None,  # served by api.docs
                  description="High-availability cluster manager for KVM/QEMU VMs. Reads need a bearer "
                  "token (read-only or admin); writes need the admin token. Writes record intent; the "
                  "cluster's manager acts on it.")
    app.state.haven = ctx
    app.state.registry = metrics.make_registry(ctx)
    _install_error_handlers(app, ctx)
    for module in (health, routes_read, routes_stream, routes_write, routes_services, routes_pools, routes_plan,
                   metrics):
        app.include_router(module.router)
    app.include_router(routes_session.router)
    if sim_control is not None:
        app.include_router(routes_sim.router)
    _install_openapi(app)
    install_docs(app)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
