"""What the dashboard tests share: paths, the browser's flags, the running service's handle.

Its own module, not ``conftest``: test modules import from it.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: flags for a root, offline, headless Chromium (no background calls to hosts we cannot reach)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
#: the worker sleeps this long before tracing, so a job can be cancelled while it runs
SLOW_SECONDS = 4


@dataclass
class Dashboard:
    """The running service and two tenants' keys."""

    url: str
    data_dir: Path
    key: str
    other_key: str
