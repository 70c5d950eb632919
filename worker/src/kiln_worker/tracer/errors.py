"""Errors raised by the tracer.

Tree::

    TraceError                      root of every tracer error (``pass_name``, ``subgraph``)
    ├── TraceInputError             the caller's func / example_inputs do not fit the API
    ├── UnsupportedModelError       the model holds something the tracer cannot freeze or run
    ├── SubgraphCompileError        a backend failed to compile one subgraph
    └── BackendUnavailableError     the requested backend is not installed on this host

All of them pickle (Celery sends them between processes): every constructor argument is kept in
``self.args`` in order, so ``pickle`` rebuilds the same error.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "SubgraphCompileError",
    "TraceError",
    "TraceInputError",
    "UnsupportedModelError",
]


class TraceError(Exception):
    """Root of the tracer's errors.

    Args:
        message: what went wrong and what to do about it.
        pass_name: the tracer pass that raised it (``inputs``, ``freeze``, ``compile`` ...).
        subgraph: the subgraph concerned, when there is one.
    """

    def __init__(self, message: str, pass_name: str | None = None, subgraph: str | None = None):
        super().__init__(message, pass_name, subgraph)
        self.message = message
        self.pass_name = pass_name
        self.subgraph = subgraph

    def __str__(self) -> str:
        where = ""
        if self.pass_name:
            where = f"[{self.pass_name}"
            where += f" / {self.subgraph}] " if self.subgraph else "] "
        return where + self.message


class TraceInputError(TraceError, ValueError):
    """``func`` or ``example_inputs`` do not follow the calling conventions of ``trace``."""


class UnsupportedModelError(TraceError):
    """The model contains state or ops the tracer cannot freeze (e.g. a lookup table)."""


class SubgraphCompileError(TraceError):
    """A backend could not compile one subgraph."""


class BackendUnavailableError(TraceError):
    """The requested compiler backend cannot be used on this machine."""
