"""The web dashboard at ``/ui``: jobs, placement pictures, live logs, submit, workers.

Server-rendered with Jinja2 templates and a small script for the live parts; no build step and
no request to any host but the Kiln API. :func:`install_ui` adds its routes and static files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install_ui"]


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard's pages under ``/ui`` and its CSS and script under ``/ui/static``."""
    from kiln_service.ui.pages import router

    app.mount("/ui/static", StaticFiles(directory=str(Path(__file__).with_name("static"))),
              name="ui-static")
    app.include_router(router)

    @app.get("/ui", include_in_schema=False)
    def _ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
