"""The contract between the Celery task and the compile child (``kiln_worker.runner``).

The parent writes a :class:`JobSpec` as JSON and starts ``python -m kiln_worker.runner SPEC``,
or, for a process started ahead of its job (``python -m kiln_worker.runner --wait BOX``), writes
one :class:`Handoff` line to the waiting child's stdin. The child writes one JSON object per
line to its stdout:

- ``{"event": "progress", "stage": "tracing", "progress": 0.2, "message": "..."}``
- ``{"event": "log", "line": "..."}``
- ``{"event": "span", "name": "kiln.stage.tracing", "trace_id": ..., ...}`` when the worker
  traces (``TRACEPARENT`` set): a finished span for the worker to export (see ``_tracing``)
- ``{"event": "ready"}`` (a waiting child: TensorFlow and Kiln are imported)

and its Python logging to stderr (the parent keeps both in the job log). It ends with:

- exit 0: ``{output_dir}/compiled_model.tar.gz`` and ``{output_dir}/report.json`` exist;
- exit 3: ``error_file`` holds ``{"kind", "code", "message"}`` (a failure a person can act on);
- anything else: a system error (traceback on stderr).

This module imports neither TensorFlow nor Celery: both sides use it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "HANDOFF_VARIABLES",
    "TARGET_BACKENDS",
    "Handoff",
    "JobSpec",
    "encode_event",
    "parse_event",
    "rewrite_workdir",
]

#: the child compiled, saved and verified the model
EXIT_OK = 0
#: the child failed in a way it understood; ``error_file`` says why
EXIT_FAILED = 3

#: compilation target (the queue name suffix) → tracer backend
TARGET_BACKENDS: dict[str, str] = {"xla": "xla", "inf1": "neuron"}


@dataclass(frozen=True)
class JobSpec:
    """Everything the compile child needs; written by the task, read by the runner.

    Attributes:
        job_id: the job being compiled (for log lines only).
        model_dir: directory holding the extracted SavedModel (``saved_model.pb`` at its root).
        output_dir: where the child writes ``compiled_model.tar.gz`` and ``report.json``.
        error_file: where the child writes ``{"kind", "code", "message"}`` before exiting 3.
        target: compilation target (``xla`` or ``inf1``).
        signature: the SavedModel signature to compile.
        flags: the ``NEURON_CC_FLAGS`` string, with any ``--workdir`` already pointing inside
            the job's temporary directory.
        example_inputs: path of the ``.npz`` of example inputs, or ``None`` to generate them.
        input_shapes: shapes for generated inputs (name → shape), when given.
        placement: a ``PlacementSpec`` as a dict, or ``None`` for automatic placement.
        seed: seed of the generated inputs.
        upload_digests: sha256 of the uploaded files (``model``, ``example_inputs``), recorded
            in the compiled model's manifest.
    """

    job_id: str
    model_dir: str
    output_dir: str
    error_file: str
    target: str = "xla"
    signature: str = "serving_default"
    flags: str = ""
    example_inputs: str | None = None
    input_shapes: dict[str, list[int]] | None = None
    placement: dict[str, Any] | None = None
    seed: int = 0
    upload_digests: dict[str, str] = field(default_factory=dict)

    @property
    def placement_mode(self) -> str | None:
        """The placement mode asked for (``measured``/``all``), or ``None`` for the default."""
        mode = (self.placement or {}).get("mode")
        return str(mode) if mode else None

    @property
    def backend(self) -> str:
        """The tracer backend of this spec's target.

        Raises:
            ValueError: the target is not one Kiln knows.
        """
        try:
            return TARGET_BACKENDS[self.target]
        except KeyError:
            known = ", ".join(sorted(TARGET_BACKENDS))
            raise ValueError(f"unknown target {self.target!r}; known targets: {known}") from None

    def write(self, path: Path) -> None:
        """Write the spec as JSON to ``path``."""
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        """Read a spec written by :meth:`write`.

        Raises:
            ValueError: the file is not a spec.
        """
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return cls(**data)


#: the variables a handoff may set in the child (W3C trace context)
HANDOFF_VARIABLES = ("TRACEPARENT", "TRACESTATE")


@dataclass(frozen=True)
class Handoff:
    """The job a waiting compile child is given, as one JSON line on its stdin.

    Attributes:
        spec: path of the job's spec file (inside the child's job folder).
        attempt: the attempt number, for the child's log lines.
        rlimits: resource limits (``resource.RLIMIT_*`` number → value) the child sets before
            it reads the spec; they can only lower those it was started with.
        environment: variables of the job the child sets (only :data:`HANDOFF_VARIABLES`: the
            trace context of the worker's span, which did not exist when the child started).
    """

    spec: str
    attempt: int = 0
    rlimits: dict[int, int] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        """The line to send (with its newline)."""
        return json.dumps({"spec": self.spec, "attempt": self.attempt,
                           "rlimits": {str(k): v for k, v in self.rlimits.items()},
                           "environment": self.environment}) + "\n"

    @classmethod
    def decode(cls, line: str) -> Handoff:
        """Read a line written by :meth:`encode`.

        Raises:
            ValueError: the line is not a handoff.
        """
        data = json.loads(line)
        if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
            raise ValueError("not a handoff line")
        limits = {int(k): int(v) for k, v in dict(data.get("rlimits") or {}).items()}
        environment = {str(k): str(v) for k, v in dict(data.get("environment") or {}).items()
                       if k in HANDOFF_VARIABLES}
        return cls(spec=data["spec"], attempt=int(data.get("attempt") or 0), rlimits=limits,
                   environment=environment)


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (without the newline) for ``event`` with ``fields``."""
    return json.dumps({"event": event, **fields}, separators=(",", ":"), default=str)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a stdout line holds, or ``None`` when it is not a protocol line.

    Anything else that reaches the child's stdout (it should not: the runner sends stray
    writes to stderr) is treated by the caller as a log line.
    """
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("event"), str):
        return data
    return None


def rewrite_workdir(flags: str, workdir: str) -> tuple[str, bool]:
    """Point ``--workdir`` in a ``NEURON_CC_FLAGS`` string at ``workdir``.

    A user's workdir is a path on *their* machine; on a worker it must never be honoured,
    so it is replaced by a directory inside the job's temporary directory.

    Args:
        flags: the flags string as submitted.
        workdir: the directory to use instead.

    Returns:
        The rewritten flags string and whether ``--workdir`` was present.

    Raises:
        ValueError: the string cannot be split like a command line, or ``--workdir`` has no value.
    """
    tokens = shlex.split(flags)
    out: list[str] = []
    found = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--workdir":
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ValueError("--workdir needs a value, such as --workdir ./artifacts")
            out.append(f"--workdir={workdir}")
            found = True
            i += 2
            continue
        if token.startswith("--workdir="):
            out.append(f"--workdir={workdir}")
            found = True
        else:
            out.append(token)
        i += 1
    return shlex.join(out), found
