"""A tiny progress bar on stderr, drawn only when stderr is a terminal.

Notebooks, CI logs and pipes get nothing: a bar redrawn with carriage returns is noise there.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "progress_enabled"]

_WIDTH = 28
#: redraw at most this often, so a fast download does not spend its time printing
_MIN_INTERVAL = 0.1


def progress_enabled(requested: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw bars: asked for, and ``stream`` (stderr) is a terminal.

    Args:
        requested: the caller's ``progress=`` argument.
        stream: the stream to draw on; ``sys.stderr`` by default.

    Returns:
        True when a bar should be shown.
    """
    if not requested:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GB"  # pragma: no cover - loop always returns


class ProgressBar:
    """One line: ``label [#####.....]  42%  detail``; a no-op when disabled.

    Args:
        label: what is progressing ("upload", "compile", "download").
        total: the total in bytes for transfers, or ``None`` for a 0..1 fraction.
        enabled: draw at all (see :func:`progress_enabled`).
        stream: where to draw; ``sys.stderr`` by default.
    """

    def __init__(
        self, label: str, *, total: int | None = None, enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._last_draw = 0.0
        self._drawn = False
        self._detail = ""

    def advance(self, n: int) -> None:
        """Add ``n`` bytes to a transfer's count."""
        self.done += n
        self._draw()

    def update(self, fraction: float, detail: str = "") -> None:
        """Set a fraction from 0 to 1 with a short ``detail`` (the compile stage)."""
        self.done = int(max(0.0, min(1.0, fraction)) * 1000)
        self.total = 1000
        changed = detail != self._detail
        self._detail = detail
        self._draw(force=changed)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _MIN_INTERVAL:
            return
        self._last_draw = now
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            text = f"{self.label:<9}[{bar}] {frac * 100:3.0f}%"
            if self.label != "compile":
                text += f"  {_human(self.done)}/{_human(self.total)}"
        else:
            text = f"{self.label:<9}{_human(self.done)}"
        if self._detail:
            text += f"  {self._detail}"
        self.stream.write("\r" + text[:110].ljust(110))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(force=True)
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
