"""What the unseen-model probes share: a case (a model, its inputs at two batch sizes, how to
check it) and the check itself, the user's path of ``tests/tracer/roundtrip.py``.

``test_unseen_models.py`` and ``test_unseen_models_2.py`` each hold a ``CASES`` table of
:class:`Case` and one parametrized test calling :func:`check_case`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from tests.tracer.roundtrip import RoundTrip, check_roundtrip, save_original
from tests.tracer.unseen_modules import normal

__all__ = ["Case", "case_marks", "check_case", "shaped"]


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, example inputs at two batch sizes (``inputs(batch, seed)``) and how to check it.

    ``batch_mode`` is the ``report["batch_mode"]`` the traced model must have (``dynamic``: it
    takes any batch size).
    """

    build: Callable[[], Any]
    inputs: Callable[[int, int], Any]
    in_memory: bool = True
    fresh_process: bool = False
    trace_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    slow: bool = False
    rtol: float = 1e-3
    batch_mode: str = "dynamic"
    save: Callable[[Any, Path], Path] = save_original
    #: a known failure, why (the case is a strict xfail)
    xfail: str = ""


def case_marks(case: Case) -> list[Any]:
    """The pytest marks of a case: ``slow``, and a strict ``xfail`` with its reason."""
    marks = [pytest.mark.slow] if case.slow else []
    if case.xfail:
        marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
    return marks


def shaped(*shape: int, dtype: str = "float32") -> Callable[[int, int], np.ndarray]:
    """Inputs of ``(batch, *shape)`` drawn from a normal distribution."""
    return lambda batch, seed: normal(batch, *shape, seed=seed).astype(dtype)


def check_case(case: Case, tmp_path: Path) -> RoundTrip:
    """Run ``case`` on the user's path (in memory, then through SavedModels) and check that the
    traced model matched the original in every report and has the expected batch mode."""
    model = case.build()
    result = check_roundtrip(model, case.inputs(2, 0), case.inputs(3, 1), tmp_path,
                             in_memory=case.in_memory, fresh_process=case.fresh_process,
                             trace_kwargs=case.trace_kwargs, rtol=case.rtol,
                             save=case.save)
    reports = [result.saved_report] + ([result.in_memory_report] if case.in_memory else [])
    for report in reports:
        assert report["numerical_check"]["within_tolerance"], report["numerical_check"]
        assert report["batch_mode"] == case.batch_mode, report["batch_mode"]
    return result
