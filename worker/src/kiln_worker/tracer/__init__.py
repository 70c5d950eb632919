"""The tracer: ``trace`` and ``analyze_model`` (no Celery, HTTP or stores here)."""

from __future__ import annotations

from kiln_worker.tracer.api import analyze_model, trace

__all__ = ["analyze_model", "trace"]
