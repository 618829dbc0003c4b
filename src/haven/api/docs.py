"""`/docs`: Swagger UI served from the package, so the API's documentation works on a cluster
without internet access (FastAPI's default page loads it from a CDN and is blank offline).

The assets come from `swagger-ui-bundle-v2` (Swagger UI 5, which reads OpenAPI 3.1 as FastAPI
writes it). ReDoc is not offered: it too would load from a CDN.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Add `/docs` and its assets under `/docs/assets` (the app must be built with `docs_url=None`)."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
                                   # Swagger UI would otherwise send the document to an online validator
                                   swagger_ui_parameters={"validatorUrl": None})

    app.mount(ASSETS, StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-assets")
