"""An MLflow model registry over its REST API (httpx; the ``mlflow`` package is not needed).

Reading (``mlflow_model``, in the API): ``models:/NAME/VERSION`` → the version's download URI →
the one folder of its artifacts that holds a ``saved_model.pb`` (the model's root, ``data/model``
of the ``mlflow.tensorflow`` flavour, ``tf2model``…, at most :data:`MAX_DEPTH` levels down) →
a ``.tar.gz`` of that folder in the request's staging, which then passes the upload checks.
Artifacts are read through the tracking server's artifact proxy (``mlflow-artifacts:`` URIs,
``mlflow server`` serves them by default); other artifact stores are refused with a message.

Writing (``mlflow_register``, in the worker once the compile succeeded): a run in
``KILN_MLFLOW_EXPERIMENT_ID`` holding the compiled SavedModel (``compiled_model/``) and
``report.json``, the report's figures as the run's metrics, and a new version of the registered
model (created if missing) whose source is ``compiled_model/`` and whose tags are the figures.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from kiln_client._artifacts import TAR_GZ_COMPRESSLEVEL
from kiln_service.config import Settings
from kiln_service.errors import (
    DependencyUnavailableError,
    PayloadTooLargeError,
    UploadRejectedError,
)
from kiln_service.uploads import ReceivedFile

__all__ = ["MlflowError", "MlflowRegistry", "parse_model_uri"]

logger = logging.getLogger(__name__)
MAX_DEPTH = 3
_MODEL_URI = re.compile(r"^models:/([^/]+)/([0-9]+)$")
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_SAFE_NAME = re.compile(r"^(?!\.\.?$)[^/\\\x00]+$")


class MlflowError(Exception):
    """The MLflow server refused or failed a call (``error_code`` as MLflow gives it)."""

    def __init__(self, message: str, error_code: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code


def parse_model_uri(uri: str) -> tuple[str, str]:
    """Split ``models:/NAME/VERSION``.

    Raises:
        UploadRejectedError: Another form (aliases and stages are not taken: a pipeline names
            the exact version it compiles).
    """
    match = _MODEL_URI.match(uri)
    if match is None:
        raise UploadRejectedError(f"mlflow_model {uri!r} is not of the form models:/NAME/VERSION "
                                  "(a version number, such as models:/my-model/3)",
                                  code="invalid_model_source")
    return match.group(1), match.group(2)


class MlflowRegistry:
    """One MLflow tracking server.

    Args:
        tracking_uri: ``http(s)://host:port`` of ``mlflow server``.
        token: A bearer token, if the server needs one.
        timeout: Seconds per HTTP call.
    """

    def __init__(self, tracking_uri: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=tracking_uri.rstrip("/"), headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        """The registry of ``KILN_MLFLOW_TRACKING_URI`` (and ``_TOKEN``)."""
        if not settings.mlflow_tracking_uri:
            raise ValueError("KILN_MLFLOW_TRACKING_URI is not set")
        return cls(settings.mlflow_tracking_uri, settings.mlflow_tracking_token)

    def __enter__(self) -> MlflowRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    # -- calls -------------------------------------------------------------------------------

    def call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        """One REST call under ``/api/2.0/mlflow/``; its JSON answer.

        Raises:
            MlflowError: An error answer (its ``error_code``) or no answer at all.
        """
        try:
            response = self._http.request(method, f"/api/2.0/mlflow/{endpoint}", **kwargs)
        except httpx.HTTPError as exc:
            raise MlflowError(f"the MLflow server did not answer ({exc})") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise MlflowError(f"MLflow answered {response.status_code} to {endpoint}: "
                              f"{body.get('message') or response.text[:300]}",
                              str(body.get("error_code", "")))
        result: dict[str, Any] = response.json() if response.content else {}
        return result

    def artifact_path(self, uri: str) -> str:
        """The proxy path of an ``mlflow-artifacts:`` URI.

        Raises:
            MlflowError: Another artifact store (Kiln reads through the server's proxy only).
        """
        parts = urlsplit(uri)
        if parts.scheme != "mlflow-artifacts":
            raise MlflowError(f"the artifacts are at {uri}, which Kiln cannot read: it reads "
                              "MLflow artifacts through the tracking server's artifact proxy "
                              "(mlflow-artifacts:/ URIs; `mlflow server` serves them unless "
                              "started with --no-serve-artifacts)", "UNSUPPORTED_ARTIFACT_STORE")
        return parts.path.strip("/")

    def list_dir(self, path: str) -> list[dict[str, Any]]:
        """The entries of an artifact folder (``path``, ``is_dir``, ``file_size``)."""
        try:
            response = self._http.get(_ARTIFACTS, params={"path": path})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise MlflowError(f"could not list MLflow artifacts at {path} ({exc})") from exc
        files: list[dict[str, Any]] = response.json().get("files", [])
        return files

    def download(self, path: str, target: Path) -> int:
        """Download one artifact file; its size."""
        try:
            with self._http.stream("GET", f"{_ARTIFACTS}/{quote(path)}") as response:
                response.raise_for_status()
                with open(target, "wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise MlflowError(f"could not download MLflow artifact {path} ({exc})") from exc
        return target.stat().st_size

    def upload(self, path: str, source: Path) -> None:
        """Upload one local file as the artifact ``path``."""
        try:
            with open(source, "rb") as body:
                response = self._http.put(f"{_ARTIFACTS}/{quote(path)}", content=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise MlflowError(f"could not upload MLflow artifact {path} ({exc})") from exc

    # -- reading a model ---------------------------------------------------------------------

    def fetch_saved_model(self, uri: str, target: Path, scratch: Path, *, max_bytes: int) -> ReceivedFile:
        """Download the SavedModel of ``models:/NAME/VERSION`` as a ``.tar.gz`` at ``target``.

        Raises:
            UploadRejectedError: The version does not exist (``model_source_not_found``) or
                holds no single SavedModel (``no_saved_model``), or its artifacts are elsewhere
                than the server's proxy (``invalid_model_source``).
            PayloadTooLargeError: The SavedModel is over ``max_bytes``.
            DependencyUnavailableError: The MLflow server failed.
        """
        name, version = parse_model_uri(uri)
        try:
            answer = self.call("GET", "model-versions/get-download-uri",
                               params={"name": name, "version": version})
            root = self.artifact_path(str(answer.get("artifact_uri", "")))
            folder, files = self._find_saved_model(uri, root)
            if sum(size for _, size in files) > max_bytes:
                raise PayloadTooLargeError(f"the SavedModel of {uri} is larger than the limit of "
                                           f"{max_bytes} bytes")
            _fresh(scratch)
            for rel, _size in files:
                local = scratch.joinpath("model", *rel.split("/"))
                local.parent.mkdir(parents=True, exist_ok=True)
                self.download(f"{folder}/{rel}" if folder else rel, local)
        except MlflowError as exc:
            raise _rejection(uri, exc) from exc
        try:
            return _archive(scratch / "model", target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _find_saved_model(self, uri: str, root: str) -> tuple[str, list[tuple[str, int]]]:
        """The folder holding ``saved_model.pb`` under ``root``, and its files (relative, size)."""
        found = [folder for folder, names in self._walk_dirs(root, MAX_DEPTH)
                 if "saved_model.pb" in names]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise UploadRejectedError(
                f"{uri} holds {what} TensorFlow SavedModel(s) (a folder with saved_model.pb) at its "
                f"root or up to {MAX_DEPTH} folders down; Kiln takes one: log it with "
                "mlflow.tensorflow.log_model (SavedModel format, data/model) or log the folder "
                "tf.saved_model.save wrote with mlflow.log_artifacts", code="no_saved_model")
        folder = found[0]
        return folder, list(self._walk_files(folder, ""))

    def _walk_dirs(self, path: str, depth: int) -> Iterator[tuple[str, set[str]]]:
        entries = self.list_dir(path)
        yield path, {e["path"] for e in entries if not e.get("is_dir")}
        if depth > 0:
            for entry in entries:
                if entry.get("is_dir"):
                    yield from self._walk_dirs(f"{path}/{entry['path']}", depth - 1)

    def _walk_files(self, base: str, rel: str) -> Iterator[tuple[str, int]]:
        for entry in self.list_dir(f"{base}/{rel}" if rel else base):
            if not _SAFE_NAME.match(str(entry.get("path", ""))):
                raise MlflowError(f"the MLflow server listed an unsafe artifact name {entry!r}")
            child = f"{rel}/{entry['path']}" if rel else str(entry["path"])
            if entry.get("is_dir"):
                yield from self._walk_files(base, child)
            else:
                yield child, int(entry.get("file_size") or 0)


def _rejection(uri: str, exc: MlflowError) -> Exception:
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return UploadRejectedError(f"{uri} cannot be read from MLflow: {exc}",
                                   code="model_source_not_found")
    if exc.error_code == "UNSUPPORTED_ARTIFACT_STORE":
        return UploadRejectedError(str(exc), code="invalid_model_source")
    return DependencyUnavailableError(f"the MLflow server failed while reading {uri}: {exc}")


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _archive(folder: Path, target: Path) -> ReceivedFile:
    """Pack ``folder`` as ``model/…`` into a ``.tar.gz`` (what an upload would be)."""
    with tarfile.open(target, "w:gz", compresslevel=TAR_GZ_COMPRESSLEVEL) as tar:
        tar.add(folder, arcname="model")
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return ReceivedFile(path=target, size=target.stat().st_size, sha256=digest.hexdigest(),
                        filename="model.tar.gz")


def now_ms() -> int:
    """MLflow's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)
