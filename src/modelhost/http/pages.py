"""The web page for people: static files shipped in the package (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


URL_FORM = '<form id="url-form" class="field url-form" novalidate>'


def router(allow_urls: bool = False) -> APIRouter:
    """The pages; the image-URL field is in the page only when the server fetches URLs
    (``--allow-urls``), so that nobody learns it is off from a red error."""
    pages = APIRouter(include_in_schema=False)
    html = (STATIC_DIR / "index.html").read_text()
    if not allow_urls:
        html = html.replace(URL_FORM, URL_FORM.replace("novalidate", "novalidate hidden"))

    @pages.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    @pages.get("/dashboard")
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})

    @pages.get("/favicon.ico")
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    return pages


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
