"""A succeeded job's outputs sent beyond Kiln's own store: ``output_location`` and ``mlflow_register``.

The worker that compiled the job runs :func:`run_exports` once the artifacts are stored and
before it publishes the job's success, so a job that reads ``succeeded`` has its exports done,
each recorded on the job (``Job.exports``) and in its log. An export that fails is recorded as
failed with the reason and leaves the job succeeded: the compile did succeed, and its artifacts
stay downloadable from Kiln.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kiln_client._artifacts import extract_saved_model
from kiln_client.models import Export
from kiln_service.config import Settings
from kiln_service.mlflow_registry import MlflowError, MlflowRegistry, now_ms
from kiln_service.sources import s3_client, s3_location

__all__ = ["figures", "register_in_mlflow", "run_exports", "write_output_location"]

logger = logging.getLogger(__name__)
Log = Callable[[str], None]
_TEXT_TAGS = frozenset({"kiln.job_id", "kiln.source", "kiln.backend"})


def run_exports(settings: Settings, *, job_id: str, pipeline: Mapping[str, Any],
                files: Mapping[str, Path], summary: Mapping[str, Any], log: Log) -> list[Export]:
    """Send a succeeded job's outputs where its ``pipeline`` asks; never raises.

    Args:
        settings: The allow-list, the MLflow server.
        job_id: The job.
        pipeline: The job's ``output_location``, ``mlflow_register`` and ``model_source``.
        files: Artifact name → local file (``compiled_model.tar.gz``, ``report.json``, …).
        summary: The job's report summary (the figures).
        log: Adds a line to the job's log.

    Returns:
        One :class:`Export` per destination asked for.
    """
    exports: list[Export] = []
    if pipeline.get("output_location"):
        exports.append(_attempt("s3", log, lambda: write_output_location(
            settings, str(pipeline["output_location"]), job_id, files)))
    if pipeline.get("mlflow_register"):
        name = str(pipeline["mlflow_register"])
        exports.append(_attempt("mlflow", log, lambda: register_in_mlflow(
            settings, name, job_id=job_id, files=files, summary=summary,
            source=pipeline.get("model_source")), failed_location=f"models:/{name}"))
    return exports


def _attempt(kind: str, log: Log, send: Callable[[], str], failed_location: str = "") -> Export:
    what = "output_location" if kind == "s3" else "MLflow registration"
    try:
        location = send()
    except Exception as exc:  # an export's failure is reported, never the compile's
        logger.warning("%s failed: %s", what, exc, exc_info=not isinstance(exc, MlflowError))
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MlflowError) else str(exc)
        log(f"[kiln] {what} failed (the job still succeeded): {detail}")
        return Export(kind=kind, status="failed", location=failed_location or "?", detail=detail)  # type: ignore[arg-type]
    log(f"[kiln] {what}: {location}")
    return Export(kind=kind, status="succeeded", location=location)  # type: ignore[arg-type]


def write_output_location(settings: Settings, url: str, job_id: str,
                          files: Mapping[str, Path]) -> str:
    """Copy the artifacts to ``<prefix>/<job_id>/<name>`` in the allowed bucket of ``url``.

    Returns:
        ``s3://bucket/prefix/<job_id>/``.
    """
    location = s3_location(url, settings, field="output_location", prefix=True)
    base = f"{location.key}/{job_id}/" if location.key else f"{job_id}/"
    client = s3_client()
    for name, path in sorted(files.items()):
        client.upload_file(str(path), location.bucket, base + name)
    return f"s3://{location.bucket}/{base}"


def figures(job_id: str, summary: Mapping[str, Any], source: str | None) -> dict[str, str]:
    """The report's figures as MLflow tags (strings): placement, numerical check, speed."""
    check = summary.get("numerical_check") or {}
    tags: dict[str, Any] = {
        "kiln.job_id": job_id, "kiln.source": source, "kiln.backend": summary.get("backend"),
        "kiln.ops_total": summary.get("ops_total"),
        "kiln.ops_on_accelerator": summary.get("ops_on_accelerator"),
        "kiln.on_neuron_ratio": summary.get("on_neuron_ratio"),
        "kiln.numerical_check.max_abs_diff": check.get("max_abs_diff"),
        "kiln.numerical_check.within_tolerance": check.get("within_tolerance"),
    }
    for batch, speed in ((summary.get("speed") or {}).get("batches") or {}).items():
        tags[f"kiln.speedup.batch_{batch}"] = (speed or {}).get("speedup")
    return {k: json.dumps(v) if isinstance(v, bool) else str(v)
            for k, v in tags.items() if v is not None}


def register_in_mlflow(settings: Settings, name: str, *, job_id: str, files: Mapping[str, Path],
                       summary: Mapping[str, Any], source: Any = None) -> str:
    """Log the compiled SavedModel and report in a run, and register it as a version of ``name``.

    Returns:
        ``models:/NAME/VERSION`` of the new version.

    Raises:
        MlflowError: The server refused or failed a call.
    """
    tags = figures(job_id, summary, str(source) if source else None)
    with MlflowRegistry.from_settings(settings) as mlflow, \
            tempfile.TemporaryDirectory(prefix="kiln-mlflow-") as tmp:
        earlier = _version_of_job(mlflow, name, job_id)
        if earlier is not None:  # an earlier attempt of this job registered it already
            return f"models:/{name}/{earlier}"
        run = mlflow.call("POST", "runs/create", json={
            "experiment_id": settings.mlflow_experiment_id, "run_name": f"kiln-{job_id}",
            "start_time": now_ms(), "tags": [{"key": k, "value": v} for k, v in tags.items()],
        })["run"]["info"]
        base = mlflow.artifact_path(run["artifact_uri"])
        model_dir = _unpack(files["compiled_model.tar.gz"], Path(tmp))
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            mlflow.upload(f"{base}/compiled_model/{path.relative_to(model_dir).as_posix()}", path)
        mlflow.upload(f"{base}/report.json", files["report.json"])
        metrics = [{"key": k[5:], "value": float(v), "timestamp": now_ms(), "step": 0}
                   for k, v in tags.items() if k not in _TEXT_TAGS and _is_number(v)]
        mlflow.call("POST", "runs/log-batch", json={"run_id": run["run_id"], "metrics": metrics})
        try:
            mlflow.call("POST", "registered-models/create", json={"name": name})
        except MlflowError as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = mlflow.call("POST", "model-versions/create", json={
            "name": name, "source": f"{run['artifact_uri']}/compiled_model", "run_id": run["run_id"],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "description": f"Compiled by Kiln job {job_id}" + (f" from {source}" if source else ""),
        })["model_version"]["version"]
        mlflow.call("POST", "runs/update", json={"run_id": run["run_id"], "status": "FINISHED",
                                                 "end_time": now_ms()})
    return f"models:/{name}/{version}"


def _version_of_job(mlflow: MlflowRegistry, name: str, job_id: str) -> str | None:
    """The version of ``name`` an earlier attempt of ``job_id`` registered, if any.

    A worker that dies after registering but before finishing the job has its job retried;
    the retry finds that version instead of registering a second one.
    """
    quoted = name.replace("'", "\\'")
    try:
        found = mlflow.call("GET", "model-versions/search", params={
            "filter": f"name = '{quoted}' and tags.`kiln.job_id` = '{job_id}'"})
    except MlflowError as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    versions = found.get("model_versions") or []
    return str(versions[0]["version"]) if versions else None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return value not in ("true", "false")


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack the worker's own ``compiled_model.tar.gz``; the SavedModel folder inside it."""
    return extract_saved_model(archive, dest / "compiled_model")
