"""Kiln worker: the tracer (``kiln_worker.trace``), the Celery worker and its compile child.

``trace`` and ``analyze_model`` resolve lazily, so ``import kiln_worker`` loads no TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["analyze_model", "trace"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("kiln_worker.tracer.api"), name)
    raise AttributeError(f"module 'kiln_worker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
