"""The wire schema of the Kiln HTTP API.

These pydantic models are shared by the service (which emits them), the worker and the SDK
(which parses them). They live in the lightest package so that the SDK needs no server code.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln_client.codes import FailureCode, FailureKind

__all__ = [
    "Artifact",
    "CacheInfo",
    "CacheUsage",
    "CompileRequest",
    "Export",
    "Failure",
    "FailureCode",
    "FailureKind",
    "Job",
    "JobList",
    "JobStatus",
    "PlacementMode",
    "PlacementSpec",
    "Problem",
    "Stage",
]


class JobStatus(str, Enum):
    """Where a job is in its lifecycle: queued → running → succeeded | failed | cancelled."""

    #: accepted and stored, waiting for a worker of its target
    QUEUED = "queued"
    #: a worker holds it and its compile process is running
    RUNNING = "running"
    #: compiled; its artifacts are stored and durable
    SUCCEEDED = "succeeded"
    #: ended with a failure reason (see ``Job.failure``)
    FAILED = "failed"
    #: cancelled by its owner before it finished
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Stage(str, Enum):
    """The step a job is at; ``Job.stage_message`` adds detail ("compiling subgraph 2 of 5")."""

    #: waiting in the queue
    QUEUED = "queued"
    #: a worker fetches the upload and prepares the inputs
    PREPARING = "preparing"
    #: the SavedModel is being loaded
    LOADING = "loading"
    #: the function is traced, frozen and partitioned
    TRACING = "tracing"
    #: accelerator subgraphs are being compiled
    COMPILING = "compiling"
    #: compiled outputs are compared with the original's on the example inputs
    VERIFYING = "verifying"
    #: artifacts are being written to the artifact store
    STORING = "storing"
    #: the job has ended
    DONE = "done"


class Failure(BaseModel):
    """Why a job failed, in words a person can act on.

    ``kind`` follows from ``code`` (each :class:`FailureCode` has one kind); it may be omitted
    when building one, and a ``kind`` that disagrees with the code is refused.
    """

    kind: FailureKind
    """``client_error`` (fix the model, inputs or flags) or ``system_error`` (Kiln's fault)."""
    code: FailureCode
    """A stable machine code from the closed catalogue :class:`FailureCode`, such as
    ``ModelError``, ``TimeOut`` or ``WorkerLost`` (see ``/docs/errors``)."""
    message: str
    """What went wrong and what to do about it."""

    @model_validator(mode="before")
    @classmethod
    def _kind_from_code(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") is None and "code" in data:
            data = {**data, "kind": FailureCode.parse(data["code"]).kind}
        return data

    @model_validator(mode="after")
    def _kind_matches_code(self) -> Failure:
        if self.kind is not self.code.kind:
            raise ValueError(f"failure code {self.code.value} is a {self.code.kind.value}, "
                             f"not a {self.kind.value}")
        return self

    @classmethod
    def of(cls, code: FailureCode, message: str) -> Failure:
        """The failure ``code`` with ``message`` (its kind is the code's)."""
        return cls(kind=code.kind, code=code, message=message)


class Artifact(BaseModel):
    """One downloadable file produced by a job."""

    name: str
    """File name, such as ``compiled_model.tar.gz``, ``report.json``, ``compile.log``."""
    size: int
    """Size in bytes."""
    sha256: str
    """Hex digest of the content; downloads carry it in the ``Digest``/``X-Checksum-SHA256`` headers."""
    content_type: str = "application/octet-stream"
    """Media type of the content."""


#: The placement modes of the tracer (``trace(placement=...)``, ``KILN_PLACEMENT``).
PlacementMode = Literal["measured", "all"]


class PlacementSpec(BaseModel):
    """Placement: the mode, and a JSON stand-in for ``subgraph_builder_function``.

    A node may go to the accelerator when its op type is in ``include_ops`` (or ``include_ops``
    is empty) and its name matches one of ``include_names`` (shell-style patterns, or all when
    empty), and neither its op type is in ``exclude_ops`` nor its name matches ``exclude_names``.
    A bare mode name stands for ``{"mode": name}``: ``PlacementSpec.model_validate("all")``.
    """

    model_config = ConfigDict(extra="forbid")

    mode: PlacementMode | None = None
    """``measured``: keep each compiled subgraph (and the whole compiled model) unless it is
    measured clearly slower than plain TensorFlow, beyond the measurement's noise; ``all``: every
    supported op compiled, nothing timed (tensorflow-neuron's behaviour). A spec without a mode
    acts as a ``subgraph_builder_function`` (placement ``all`` within its rules); no spec at all is
    the worker's ``KILN_PLACEMENT``, else ``measured``."""

    include_ops: list[str] = Field(default_factory=list)
    """Op types allowed on the accelerator, such as ``["MatMul", "Conv2D"]``; empty means all."""
    exclude_ops: list[str] = Field(default_factory=list)
    """Op types kept on CPU."""
    include_names: list[str] = Field(default_factory=list)
    """Shell-style node-name patterns allowed on the accelerator; empty means all."""
    exclude_names: list[str] = Field(default_factory=list)
    """Shell-style node-name patterns kept on CPU."""

    @model_validator(mode="before")
    @classmethod
    def _bare_mode(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @property
    def has_rules(self) -> bool:
        """Whether any op or name rule restricts placement (else only the mode matters)."""
        return bool(self.include_ops or self.exclude_ops or self.include_names or self.exclude_names)


class CompileRequest(BaseModel):
    """The form fields of ``POST /v1/compile`` besides the uploaded files."""

    model_config = ConfigDict(extra="forbid")

    flags: str = ""
    """A ``NEURON_CC_FLAGS`` string, such as ``--workdir ./w --dynamic-batch-size``."""
    target: str = "xla"
    """Compilation target: ``xla`` (any machine) or ``inf1`` (AWS Inferentia, Neuron toolchain)."""
    signature: str = "serving_default"
    """The SavedModel signature to compile."""
    placement: PlacementSpec | None = None
    """Placement mode (``measured`` or ``all``) and which nodes may go to the accelerator;
    automatic (measured) when omitted."""
    input_shapes: dict[str, list[int]] | None = None
    """Shapes for generated example inputs (name → shape) when no ``example_inputs`` is sent."""
    name: str | None = None
    """A human-friendly name for the job."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form key/value labels, usable as list filters (``label=key:value``)."""
    timeout_seconds: int | None = None
    """Wall-clock limit for the compile; the server default applies when omitted."""
    webhook_url: str | None = None
    """An http(s) URL to POST this job's events to (Standard Webhooks, signed)."""
    webhook_events: list[str] | None = None
    """Events sent to ``webhook_url``: ``job.running``, ``job.stage``, ``job.succeeded``,
    ``job.failed``, ``job.cancelled``; the three terminal ones when omitted."""
    webhook_secret: str | None = None
    """The ``whsec_…`` secret signing this job's deliveries; one is generated when omitted
    (read it from ``GET /v1/jobs/{id}/webhook``)."""
    model_url: str | None = None
    """Take the model from ``s3://bucket/key`` (an archive, as the ``model`` part would be)
    instead of uploading it; the service fetches it with its own credentials, from the buckets
    its operator allows (``KILN_S3_ALLOWED_BUCKETS``)."""
    mlflow_model: str | None = None
    """Take the model from the MLflow registry the service is configured with:
    ``models:/NAME/VERSION`` (a TensorFlow SavedModel; see ``docs/pipelines.md``)."""
    mlflow_register: str | None = None
    """When the job succeeds, register the compiled model as a new version of this MLflow
    registered model (created if missing), with the report's figures as tags."""
    output_location: str | None = None
    """``s3://bucket/prefix``: when the job succeeds, also write its artifacts to
    ``prefix/<job id>/`` (an allowed bucket, as for ``model_url``)."""

    cache: bool = True
    """Answer from the tenant's compile cache when the same model, inputs, flags, target,
    signature, placement, shapes and toolchain were compiled before (``false``: always compile,
    and do not add the outcome to the cache)."""
    model_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Instead of the ``model`` part: the SavedModel's content digest
    (:func:`kiln_client.digest.model_digest`), asking for an answer from the tenant's compile
    cache without uploading the model. A hit answers as an upload's would; a miss is a 409
    ``upload_required`` (nothing stored), and the client then sends the model."""


class Export(BaseModel):
    """Where a succeeded job's outputs were sent beside Kiln's own store, and how it went."""

    kind: Literal["s3", "mlflow"]
    """``s3`` for ``output_location``, ``mlflow`` for ``mlflow_register``."""
    status: Literal["succeeded", "failed"]
    """A failed export leaves the job succeeded: its artifacts stay downloadable from Kiln."""
    location: str
    """``s3://bucket/prefix/<job id>/`` or ``models:/NAME/VERSION`` (``models:/NAME`` when
    registration failed)."""
    detail: str | None = None
    """Why it failed, when it did."""


class CacheInfo(BaseModel):
    """How the compile cache answered a job (``Job.cache``)."""

    hit: bool
    """Whether the job's outcome came from the cache (it then ended at once, without a compile)."""
    job: str | None = None
    """On a hit, the id of the job whose compile this one reuses (its artifacts are the same
    stored files)."""


class Job(BaseModel):
    """A compile job as the API reports it."""

    id: str
    """Opaque job id (a UUID hex string)."""
    name: str | None = None
    """The name given at submission, if any."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels given at submission."""
    status: JobStatus
    """Lifecycle state; see :class:`JobStatus`."""
    stage: Stage = Stage.QUEUED
    """The step the job is at; see :class:`Stage`."""
    stage_message: str | None = None
    """Detail of the stage, such as ``compiling subgraph 2 of 5``."""
    progress: float = 0.0
    """Overall progress from 0.0 to 1.0."""
    target: str = "xla"
    """Compilation target."""
    flags: str = ""
    """The ``NEURON_CC_FLAGS`` string the job was compiled with."""
    signature: str = "serving_default"
    """The compiled SavedModel signature."""
    placement: PlacementSpec | None = None
    """The placement spec, if one was given."""
    input_shapes: dict[str, list[int]] | None = None
    """Shapes used to generate example inputs, if given."""
    timeout_seconds: int
    """Wall-clock limit of the compile."""
    input_digests: dict[str, str] = Field(default_factory=dict)
    """sha256 of each uploaded file: ``model`` and, when sent, ``example_inputs``."""
    created_at: datetime
    """When the job was accepted."""
    started_at: datetime | None = None
    """When a worker started it (latest attempt)."""
    finished_at: datetime | None = None
    """When it reached a terminal status."""
    attempts: int = 0
    """How many times a worker has started it."""
    failure: Failure | None = None
    """Why it failed, when ``status`` is ``failed``."""
    artifacts: list[Artifact] = Field(default_factory=list)
    """Files available for download."""
    report: dict[str, Any] | None = None
    """Summary of the report (placement, timings, numerical check) once succeeded."""
    model_source: str | None = None
    """Where the model came from when it was not uploaded: ``s3://bucket/key`` or
    ``models:/NAME/VERSION``."""
    output_location: str | None = None
    """The ``s3://bucket/prefix`` the job's artifacts are also written to, if asked."""
    mlflow_register: str | None = None
    """The MLflow registered model the compiled model becomes a version of, if asked."""
    exports: list[Export] = Field(default_factory=list)
    """What became of ``output_location`` and ``mlflow_register`` once the job succeeded."""
    cache: CacheInfo | None = None
    """``{"hit": true, "job": <source job id>}`` when answered from the compile cache,
    ``{"hit": false}`` when looked up and compiled, ``None`` when the cache was not used."""


class CacheUsage(BaseModel):
    """``GET``/``DELETE /v1/cache``: the caller's compile cache."""

    entries: int
    """Outcomes held (successes and deterministic failures)."""
    bytes: int
    """Size of the artifacts they keep."""
    max_bytes: int
    """The bound past which the least recently used entries are evicted (0: the cache is off)."""
    purged: int | None = None
    """On ``DELETE``, how many entries were removed."""


class JobList(BaseModel):
    """One page of ``GET /v1/jobs``, newest first."""

    items: list[Job]
    """The jobs of this page."""
    next_cursor: str | None = None
    """Pass as ``cursor`` to get the next page; ``None`` on the last page."""


class Problem(BaseModel):
    """An RFC 9457 problem document, as every API error is answered."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    """A URI naming the problem type: ``<server>/docs/errors#<code>``, the entry of ``code`` on
    the server's error catalogue page."""
    title: str
    """Short summary of the problem type."""
    status: int
    """The HTTP status code."""
    detail: str | None = None
    """What went wrong in this case, and what to do about it."""
    instance: str | None = None
    """The request path."""
    code: str
    """A stable machine code from the catalogue ``kiln_client.problem_codes.ProblemCode``, such
    as ``invalid_archive`` or ``job_not_found``."""
    request_id: str | None = None
    """The ``X-Request-ID`` of the request, for support."""
    errors: list[dict[str, Any]] | None = None
    """Field-level validation errors, when any."""
