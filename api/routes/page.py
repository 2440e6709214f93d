"""The live market page: ``/`` and its static files under ``/static`` (package data,
no build step; the chart library is vendored from npm as its built file)."""

from __future__ import annotations

from pathlib import Path

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parents[1] / "static"


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> File:
    """The page; it reads everything else from the public API and the SSE streams."""
    return File(STATIC / "index.html", content_disposition_type="inline", media_type="text/html")


def static_files() -> Router:
    return create_static_files_router(
        "/static",
        directories=[STATIC],
        name="static",
        cache_control=CacheControlHeader(max_age=300),
    )
