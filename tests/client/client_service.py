"""A ``kiln-service up`` the client tests run against (started by ``conftest.kiln_service``).

Its own module, not ``conftest``: every test folder has a ``conftest``, so ``from conftest
import …`` picks whichever was loaded last when the whole suite is collected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["TF_ENV", "RunningService"]

TF_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class RunningService:
    """A ``kiln-service up`` started by the test session."""

    url: str
    data_dir: Path
    log: Path

    @property
    def api_key(self) -> str:
        """The first API key ``up`` wrote to ``{data_dir}/api-key`` (tenant ``default``)."""
        return (self.data_dir / "api-key").read_text().strip()
