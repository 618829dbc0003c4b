"""/docs works without internet: Swagger UI and everything it loads come from the app itself."""
from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

from fastapi.testclient import TestClient


class References(HTMLParser):
    """Every URL a page makes the browser load (scripts, stylesheets, icons, images, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_and_every_asset_come_from_the_app(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    parser = References()
    parser.feed(page.text)
    assert len(parser.urls) >= 3, parser.urls  # the script, the stylesheet, the icon
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"/docs loads {url} from another host"
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert "http://" not in page.text and "https://" not in page.text, "no URL off this host"
    assert '"validatorUrl": null' in page.text  # Swagger UI would send the document to an online validator
    assert client.get("/openapi.json").status_code == 200  # what the page reads


def test_redoc_is_not_offered(client: TestClient) -> None:
    """FastAPI's ReDoc page loads from a CDN: haven does not serve it."""
    assert client.get("/redoc").status_code == 404
