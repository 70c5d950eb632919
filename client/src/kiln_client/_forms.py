"""Request parts of ``POST /v1/compile`` and ``GET /v1/jobs``: form fields, query, upload files."""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from kiln_client import models
from kiln_client._progress import ProgressBar, progress_enabled
from kiln_client._upload import PreparedUpload
from kiln_client.errors import InputError
from kiln_client.flags import FlagsError, parse_flags

__all__ = ["compile_form", "list_params", "model_sources", "multipart", "upload_files"]


def compile_form(
    flags: str | Sequence[str] | None, target: str, signature: str,
    placement: models.PlacementSpec | Mapping[str, Any] | str | None, name: str | None,
    labels: Mapping[str, str] | None, timeout: int | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    webhook: Mapping[str, Any] | None = None, sources: Mapping[str, Any] | None = None,
    cache: bool = True,
) -> dict[str, str]:
    """The form fields of ``POST /v1/compile``, checked against ``CompileRequest`` first."""
    flag_text = _checked_flags(flags)
    try:
        req = models.CompileRequest(
            flags=flag_text, target=target, signature=signature,
            placement=models.PlacementSpec.model_validate(
                dict(placement) if isinstance(placement, Mapping) else placement
            ) if placement is not None else None,
            input_shapes={k: list(v) for k, v in input_shapes.items()} if input_shapes else None,
            name=name, labels=dict(labels or {}), timeout_seconds=timeout,
            cache=cache, **_webhook_fields(webhook), **{k: v for k, v in (sources or {}).items() if v},
        )
    except pydantic.ValidationError as exc:
        raise InputError(f"invalid compile options: {exc}") from exc
    return _form_fields(req)


def _checked_flags(flags: str | Sequence[str] | None) -> str:
    """The flags as one string, parsed here too so that a typo fails before a large upload."""
    flag_text = flags if isinstance(flags, str) or flags is None else shlex.join(flags)
    try:
        parse_flags(flag_text or "")
    except FlagsError as exc:
        raise InputError(f"flags: {exc}") from exc
    return flag_text or ""


def _form_fields(req: models.CompileRequest) -> dict[str, str]:
    """The request as form fields: text as is, structured values as JSON, defaults left out."""
    form = {"flags": req.flags, "target": req.target, "signature": req.signature}
    if req.placement is not None:
        form["placement"] = req.placement.model_dump_json(exclude_none=True)
    if req.input_shapes is not None:
        form["input_shapes"] = json.dumps(req.input_shapes)
    if req.name is not None:
        form["name"] = req.name
    if req.labels:
        form["labels"] = json.dumps(req.labels)
    if req.timeout_seconds is not None:
        form["timeout_seconds"] = str(req.timeout_seconds)
    if req.webhook_url is not None:
        form["webhook_url"] = req.webhook_url
    if req.webhook_events is not None:
        form["webhook_events"] = json.dumps(req.webhook_events)
    if req.webhook_secret is not None:
        form["webhook_secret"] = req.webhook_secret
    for field in SOURCE_FIELDS:
        if getattr(req, field) is not None:
            form[field] = getattr(req, field)
    if not req.cache:
        form["cache"] = "false"
    return form


#: Form fields naming where the model comes from and where outputs also go.
SOURCE_FIELDS = ("model_url", "mlflow_model", "mlflow_register", "output_location")


def multipart(form: dict[str, str], files: dict[str, Any]) -> dict[str, Any]:
    """``data``/``files`` of the request: multipart even when no file is sent."""
    if files:
        return {"data": form, "files": files}
    return {"files": {k: (None, v) for k, v in form.items()}}


def model_sources(model: Any, sources: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A ``model`` given as ``s3://…`` or ``models:/…`` moved to its form field.

    Returns:
        The model to upload (``None`` when the service fetches it) and the source fields.
    """
    fields = {k: v for k, v in sources.items() if v is not None}
    if model is None and not (fields.get("model_url") or fields.get("mlflow_model")):
        raise InputError("give a model: a path, a keras.Model, or model_url / mlflow_model")
    if isinstance(model, str) and model.startswith("s3://"):
        return None, {**fields, "model_url": model}
    if isinstance(model, str) and model.startswith("models:/"):
        return None, {**fields, "mlflow_model": model}
    return model, fields


def _webhook_fields(webhook: Mapping[str, Any] | None) -> dict[str, Any]:
    fields = {k: v for k, v in (webhook or {}).items() if v is not None}
    if "webhook_events" in fields:
        fields["webhook_events"] = list(fields["webhook_events"])
    return fields


def list_params(status: str | models.JobStatus | None, label: Any, target: str | None,
                 name: str | None, page_size: int) -> dict[str, Any]:
    """Query parameters of ``GET /v1/jobs``; ``label`` as ``k=v``/``k:v``, dict or list."""
    params: dict[str, Any] = {"limit": page_size}
    if status is not None:
        params["status"] = models.JobStatus(status).value
    if target:
        params["target"] = target
    if name:
        params["name"] = name
    labels: list[str] = []
    if isinstance(label, Mapping):
        labels = [f"{k}:{v}" for k, v in label.items()]
    elif isinstance(label, str):
        labels = [label]
    elif label:
        labels = list(label)
    if labels:
        params["label"] = [_label_filter(item) for item in labels]
    return params


def _label_filter(item: str) -> str:
    """``key=value`` or ``key:value`` as the API's ``key:value`` (the first separator wins)."""
    eq, colon = item.find("="), item.find(":")
    if eq != -1 and (colon == -1 or eq < colon):
        return f"{item[:eq]}:{item[eq + 1:]}"
    return item


class _ProgressFile:
    """A read-only file wrapper that advances a progress bar; httpx streams from it."""

    def __init__(self, path: Path, bar: ProgressBar) -> None:
        self._file = path.open("rb")
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._bar.advance(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self._bar.done = 0  # a retry starts the upload over
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def upload_files(upload: PreparedUpload, progress: bool) -> Iterator[dict[str, Any]]:
    size = sum(p.stat().st_size for p in (upload.model, upload.example_inputs) if p is not None)
    bar = ProgressBar("upload", total=size, enabled=progress_enabled(progress))
    files: dict[str, Any] = {}
    if upload.model is not None:
        files["model"] = (upload.model.name, _ProgressFile(upload.model, bar), "application/octet-stream")
    if upload.example_inputs is not None:
        files["example_inputs"] = ("example_inputs.npz", _ProgressFile(upload.example_inputs, bar), "application/octet-stream")
    try:
        yield files
    finally:
        bar.close()
        for _name, handle, _type in files.values():
            handle.close()


