"""The one small protocol every compiler backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class CompiledSubgraph:
    """A subgraph function compiled by a backend.

    ``function`` is the compiled callable (a ConcreteFunction for ``xla``); ``function_defs``
    are the FunctionDefs to add to the rewritten graph's library, the first one being the one
    the call node invokes.
    """

    function: Any
    function_defs: list[Any]
    compile_seconds: float
    log: str = ""
    hlo: str | None = None


class Backend(Protocol):
    """A compiler backend: which nodes it takes, and how it compiles one subgraph."""

    name: str

    def is_node_supported(self, node: Any, library: Any) -> str | None:
        """Return ``None`` when the backend can compile ``node``, else the reason it cannot."""
        ...

    def compile_subgraph(
        self, name: str, body: Callable[..., Any], specs: list[Any], example_args: list[Any]
    ) -> CompiledSubgraph:
        """Compile ``body`` (a Python function over tensors) for ``specs`` and run it once on
        ``example_args``; raise on failure."""
        ...
