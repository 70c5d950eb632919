"""Kiln worker: the tracer (``kiln_worker.trace``), the Celery worker and its compile child.

``trace``, ``analyze_model`` and ``load`` resolve lazily, so ``import kiln_worker`` loads no TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analyze_model", "load", "trace"]

#: where each lazily-resolved public name lives
_HOMES = {"analyze_model": "kiln_worker.tracer.api", "trace": "kiln_worker.tracer.api",
          "load": "kiln_worker.manifest"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'kiln_worker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
