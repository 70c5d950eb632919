"""The embedded broker: kombu's filesystem transport, with its routing state kept per folder.

kombu's ``filesystem`` transport keeps the exchanges and queue bindings it has declared in one
``BrokerState`` *per process* (a class attribute), while the routing table itself is a file in
the broker's control folder. A process that opens a second broker folder (tests, or any tool
that points two apps at two data dirs) then finds its bindings "already declared", never writes
``kiln.exchange`` into the new control folder, and the direct exchange routes the first messages
to no queue: they are dropped without an error. This transport keys that state by the control
folder, so each broker folder is declared once per process, like a separate server would be.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from kombu.transport import filesystem, virtual

__all__ = ["TRANSPORT", "FolderStateTransport"]

#: What ``broker_transport`` names for a ``filesystem://`` broker URL.
TRANSPORT = f"{__name__}:FolderStateTransport"


class FolderStateTransport(filesystem.Transport):
    """kombu's filesystem transport whose broker state is shared per control folder."""

    _states: ClassVar[dict[str, virtual.BrokerState]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        folder = os.path.realpath(client.transport_options.get("control_folder", "control"))
        with self._lock:
            self.state = self._states.setdefault(folder, virtual.BrokerState())  # type: ignore[no-untyped-call]
