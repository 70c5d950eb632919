"""Opt-in debug dumps for ``--workdir``: without the flag, nothing touches the disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class WorkdirDumper:
    """Writes debug artifacts under one directory, or does nothing when it has none.

    Args:
        root: the directory given with ``--workdir``; ``None`` disables every dump.
    """

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        """Whether dumps go to disk."""
        return self.root is not None

    def _path(self, relative: str) -> Path | None:
        if self.root is None:
            return None
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def graph_def(self, relative: str, graph_def: Any) -> None:
        """Dump a GraphDef as ``<relative>.pb`` and ``<relative>.pbtxt``."""
        path = self._path(relative)
        if path is None:
            return
        from google.protobuf import text_format

        path.with_suffix(".pb").write_bytes(graph_def.SerializeToString())
        path.with_suffix(".pbtxt").write_text(text_format.MessageToString(graph_def))

    def text(self, relative: str, text: str) -> None:
        """Dump a text file."""
        path = self._path(relative)
        if path is not None:
            path.write_text(text)

    def json(self, relative: str, value: Any) -> None:
        """Dump a JSON file."""
        self.text(relative, json.dumps(value, indent=2, sort_keys=True, default=str))

    def arrays(self, relative: str, arrays: dict[str, np.ndarray]) -> None:
        """Dump named arrays as an ``.npz`` (no pickle)."""
        path = self._path(relative)
        if path is not None:
            np.savez(path, **arrays)  # type: ignore[arg-type]
