"""Service settings, read once per process from ``KILN_*`` environment variables.

The defaults form the *embedded* column of the design: a SQLite file, a filesystem Celery
transport and a local artifact directory, all under ``KILN_DATA_DIR``. Production sets the URLs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TARGETS", "Settings", "get_settings"]

#: Compilation targets the service accepts; each has its own queue ``kiln.<target>``.
TARGETS: tuple[str, ...] = ("xla", "inf1")

GIB = 1024**3


class Settings(BaseSettings):
    """Configuration of the API process (and of the stores the worker opens)."""

    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    data_dir: Path = Path(".kiln")
    """Root of the embedded defaults (database, broker folders, artifacts, staging)."""
    database_url: str | None = None
    """Job store URL; default ``sqlite:///{data_dir}/kiln.db``."""
    broker_url: str = "filesystem://"
    """Celery broker; ``filesystem://`` is the embedded transport under ``{data_dir}/broker``."""
    storage_url: str | None = None
    """Artifact store URL; default ``file://{data_dir}/artifacts``."""
    max_upload_bytes: int = Field(default=2 * GIB, gt=0)
    """Hard cap on one uploaded file (413 past it)."""
    max_request_bytes: int | None = Field(default=None, gt=0)
    """Cap on a whole request body; default: two uploads at the cap plus 1 MiB of form fields."""
    max_archive_members: int = Field(default=100_000, gt=0)
    """Most entries an uploaded archive may hold."""
    max_archive_total_bytes: int = Field(default=16 * GIB, gt=0)
    """Largest total of the declared (uncompressed) sizes of an archive's entries."""
    max_form_field_bytes: int = Field(default=64 * 1024, gt=0)
    """Largest non-file form field."""
    default_timeout_seconds: int = Field(default=900, gt=0)
    """Compile time limit when a job does not give one."""
    max_timeout_seconds: int = Field(default=3600, gt=0)
    """Largest ``timeout_seconds`` a job may ask for."""
    upload_idle_timeout_seconds: float = Field(default=60.0, gt=0)
    """An upload whose body sends nothing for this long is cut off (408) and its spool removed."""
    upload_chunk_bytes: int = Field(default=1024 * 1024, gt=0)
    """Chunk size used when copying uploads and serving downloads."""
    auto_migrate: bool | None = None
    """Apply migrations at start-up; default: only for a SQLite database."""
    host: str = "127.0.0.1"
    """Address ``kiln-service serve`` binds to."""
    port: int = 8000
    """Port ``kiln-service serve`` listens on."""
    log_follow_poll_seconds: float = Field(default=0.5, gt=0)
    """How often a log stream polls the job store for new lines."""
    worker_liveness_seconds: float = Field(default=60.0, gt=0)
    """A worker counts as live while it was seen within this many seconds (workers refresh
    every ``KILN_WORKER_ADVERTISE_SECONDS``, 10 by default)."""
    reject_unserved_targets: bool = False
    """Refuse (503 ``no_worker_for_target``) a job whose target no live worker serves, instead
    of queueing it with a stage message saying what it waits for."""
    auth: Literal["on", "off"] = "on"
    """``on``: every ``/v1`` route needs ``Authorization: Bearer <API key>`` and the key's tenant
    scopes what the caller sees; ``off``: no keys, everything belongs to tenant ``default``."""
    ui_session_secret: str | None = None
    """Key that signs dashboard (``/ui``) session cookies; default: a random one kept in
    ``{data_dir}/ui-session-secret``. Set the same value on every API replica that does not
    share a data folder."""
    rate_limit_per_minute: int = Field(default=60, ge=0)
    """Submissions (``POST /v1/compile``) one tenant may make per minute, per API process
    (token bucket, bursts up to this many); 0 turns the limit off."""
    max_active_jobs_per_tenant: int = Field(default=20, ge=0)
    """Most unfinished (queued or running) jobs one tenant may have, across all API processes;
    0 turns the cap off."""
    cache_max_bytes: int = Field(default=10 * GIB, ge=0)
    """Size bound of each tenant's compile cache (the artifacts its entries keep); past it the
    least recently used entries are evicted. 0 turns the compile cache off."""

    webhook_allow_private_urls: bool = False
    """Allow webhook URLs on loopback, private, link-local or otherwise internal addresses
    (refused by default so that a tenant cannot make Kiln call into its own network)."""
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long one webhook attempt waits for the receiver's answer."""
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    """Delay before the first retry of a failed delivery; each further retry doubles it."""
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    """Longest delay between two attempts of one delivery."""
    webhook_give_up_seconds: float = Field(default=24 * 3600.0, gt=0)
    """A delivery still failing this long after its event is marked ``failed``."""
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the API's webhook sender looks for new events and due deliveries."""
    webhook_sender: bool = True
    """Run the webhook sender in this API process (several replicas share the work safely)."""
    event_retention_days: float = Field(default=14.0, gt=0)
    """Job events (the live stream's history, ``Last-Event-ID``) and finished webhook deliveries
    older than this are deleted by the webhook sender; pending deliveries are always kept."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line (``job_id``, ``request_id``, ``tenant``,
    ``attempt`` where they apply) from the API, the worker and the compile process; ``text``:
    readable lines for a terminal."""
    tracing: Literal["off", "otlp"] = "off"
    """``otlp``: OpenTelemetry traces from the API, the workers and the compile processes (needs
    the ``otel`` extra, ``kiln-service[otel]`` / ``kiln-worker[otel]``), sent by the OTLP/HTTP
    exporter as the standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables say."""
    events_fallback_poll_seconds: float = Field(default=5.0, gt=0)
    """Live event streams are woken by Redis pub/sub (a ``redis://`` broker) or PostgreSQL
    ``LISTEN/NOTIFY``; as a safety net each followed job is re-read this often (once per job
    and API process, whatever the number of followers). With neither (the embedded default) the
    ``KILN_LOG_FOLLOW_POLL_SECONDS`` interval is used instead."""
    s3_allowed_buckets: str = ""
    """Comma-separated buckets a job may name in ``model_url`` (``s3://bucket/key``) or
    ``output_location`` (``s3://bucket/prefix``); the service reads and writes them with its own
    credentials (boto3's environment, as for an S3 artifact store). Empty: none."""
    presigned_url_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    """Lifetime of the presigned URL a download with ``?redirect=true`` is sent to (S3 artifact
    store only)."""
    mlflow_tracking_uri: str | None = None
    """The MLflow tracking server (``http(s)://…``) that ``mlflow_model`` reads from and
    ``mlflow_register`` writes to, over its REST API; unset: MLflow jobs are refused."""
    mlflow_tracking_token: str | None = None
    """Bearer token sent to the MLflow server, if it needs one."""
    mlflow_experiment_id: str = "0"
    """The MLflow experiment that holds the run of each registered compiled model."""

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_words(cls, value: Any) -> Any:
        # Accept the usual spellings of a switch; anything else fails validation by name.
        words = {"on": "on", "true": "on", "1": "on", "yes": "on",
                 "off": "off", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            return words.get(value.strip().lower(), value)
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Relative defaults would silently move when the process changes directory.
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_request_bytes is not None and self.max_request_bytes < self.max_upload_bytes:
            raise ValueError(
                "KILN_MAX_REQUEST_BYTES must be at least KILN_MAX_UPLOAD_BYTES "
                f"({self.max_request_bytes} < {self.max_upload_bytes})"
            )
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ValueError(
                "KILN_DEFAULT_TIMEOUT_SECONDS must not exceed KILN_MAX_TIMEOUT_SECONDS "
                f"({self.default_timeout_seconds} > {self.max_timeout_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _check_extras(self) -> Settings:
        # A URL whose client library is an extra that is not installed: say which to install.
        from kiln_service._extras import missing_extras

        missing = missing_extras({"KILN_DATABASE_URL": self.resolved_database_url,
                                  "KILN_BROKER_URL": self.broker_url,
                                  "KILN_STORAGE_URL": self.resolved_storage_url})
        if missing:
            raise ValueError("; ".join(missing))
        return self

    @property
    def resolved_database_url(self) -> str:
        """The job store URL, defaulting to the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.data_dir / 'kiln.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """The artifact store URL, defaulting to ``{data_dir}/artifacts``."""
        return self.storage_url or f"file://{self.data_dir / 'artifacts'}"

    @property
    def allowed_buckets(self) -> frozenset[str]:
        """The buckets of ``KILN_S3_ALLOWED_BUCKETS``."""
        return frozenset(b.strip() for b in self.s3_allowed_buckets.split(",") if b.strip())

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded filesystem transport."""
        return self.data_dir / "broker"

    @property
    def staging_dir(self) -> Path:
        """Where uploads are spooled and checked before they enter the artifact store."""
        return self.data_dir / "staging"

    @property
    def resolved_max_request_bytes(self) -> int:
        """Cap on a whole request body."""
        return self.max_request_bytes or 2 * self.max_upload_bytes + 1024 * 1024

    @property
    def auth_enabled(self) -> bool:
        """Whether API keys are required (``KILN_AUTH=on``)."""
        return self.auth == "on"

    @property
    def is_sqlite(self) -> bool:
        """Whether the job store is SQLite (the embedded default)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        """Whether start-up applies migrations (default: only the embedded SQLite store)."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process's settings, read from the environment once.

    Returns:
        The cached :class:`Settings`. Tests override the dependency instead of the cache.
    """
    return Settings()
