"""The manifest inside every compiled SavedModel: what made it, and what serving it needs.

Kiln writes ``assets.extra/kiln-manifest.json`` into each compiled SavedModel (TensorFlow Serving
ignores ``assets.extra``). This module reads and checks it without TensorFlow, for
``kiln verify PATH`` and for ``kiln_worker.load``:

- :func:`read_manifest` parses it into a :class:`Manifest`;
- :func:`content_digest` recomputes the SavedModel's content digest (file names and bytes, not
  archive metadata), which must equal ``Manifest.content_sha256``;
- :func:`check_manifest` lists what would stop the running TensorFlow from serving the model,
  each finding with what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kiln_client.digest import combine_file_digests, model_digest

__all__ = [
    "MANIFEST_PATH",
    "Finding",
    "Manifest",
    "ManifestError",
    "ServingRequirements",
    "TensorInfo",
    "check_manifest",
    "combine_file_digests",
    "content_digest",
    "read_manifest",
]

#: where the manifest lives, relative to the SavedModel directory
MANIFEST_PATH = "assets.extra/kiln-manifest.json"
#: the TensorFlow Serving flag without which XLA-compiled functions do not run on CPU
TF_SERVING_XLA_FLAG = "--xla_cpu_compilation_enabled=true"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing, unreadable or not a Kiln manifest."""


class TensorInfo(BaseModel):
    """One input or output of the serving signature."""

    dtype: str
    """TensorFlow dtype name, such as ``float32``."""
    shape: list[int | None] | None
    """Dimensions (``None`` for any size), or ``None`` for an unknown rank."""


class ServingRequirements(BaseModel):
    """What a server needs to run the compiled model."""

    tensorflow_min: str
    """The oldest TensorFlow (``major.minor``) that can load the graph: the one that made it."""
    tensorflow_below: str
    """The first TensorFlow major version assumed not to load it, such as ``3``."""
    xla_jit: bool
    """True when the graph holds XLA-compiled calls (``_XlaMustCompile``): the server's
    TensorFlow must be built with the XLA JIT (the PyPI builds are)."""
    tf_serving_flags: list[str] = Field(default_factory=list)
    """Flags TensorFlow Serving must be started with, such as ``--xla_cpu_compilation_enabled=true``."""


class Manifest(BaseModel):
    """The contents of ``assets.extra/kiln-manifest.json``."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    kind: str = "kiln.compiled-savedmodel"
    job_id: str | None = None
    """The job that made it, when made by the service."""
    created_at: str
    """UTC time of the compile, ISO 8601."""
    versions: dict[str, str]
    """``kiln-worker``, ``tensorflow``, ``tf-keras``, ``python`` and the backend's versions."""
    backend: str
    target: str
    flags: str
    """The ``NEURON_CC_FLAGS`` string the model was compiled with."""
    placement: str
    """How ops were placed: ``measured`` or ``all``, with ``+spec`` when a placement spec's op
    or name rules applied."""
    signature_name: str = "serving_default"
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    upload_digests: dict[str, str] = Field(default_factory=dict)
    """sha256 of the uploaded files (``model``, ``example_inputs``) when made by the service."""
    content_sha256: str
    """:func:`content_digest` of the SavedModel directory, the manifest excluded."""
    placement_summary: dict[str, Any] = Field(default_factory=dict)
    """``ops_total``, ``ops_on_accelerator``, ``on_neuron_ratio``, ``subgraphs_compiled``."""
    serving: ServingRequirements


class Finding(BaseModel):
    """One problem :func:`check_manifest` found, with what to do about it."""

    severity: str
    """``error`` (it will not serve as it is), ``warning`` (it may not), or ``note`` (how to
    serve it)."""
    message: str


def read_manifest(saved_model_dir: str | Path) -> Manifest:
    """Read the manifest of a compiled SavedModel directory.

    Raises:
        ManifestError: no manifest, bad JSON, or not a Kiln manifest.
    """
    path = Path(saved_model_dir) / MANIFEST_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} does not exist: is this a SavedModel compiled by Kiln?") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != "kiln.compiled-savedmodel":
        raise ManifestError(f"{path} is not a Kiln manifest")
    try:
        return Manifest.model_validate(data)
    except ValueError as exc:
        raise ManifestError(f"{path} is malformed: {exc}") from exc


def content_digest(saved_model_dir: str | Path) -> str:
    """sha256 over the SavedModel's files: each relative path and its bytes, in sorted order.

    Independent of how the directory was archived (tar order, mtimes, owners); the manifest
    itself is left out so it can carry the digest (:func:`kiln_client.digest.model_digest`).
    """
    return model_digest(saved_model_dir, exclude={MANIFEST_PATH})


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)(?:\.(\d+))?", version.strip())
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def check_manifest(
    manifest: Manifest, saved_model_dir: str | Path | None = None,
    tensorflow_version: str | None = None,
) -> list[Finding]:
    """What would stop this SavedModel from serving, each finding saying what to do.

    Args:
        manifest: the manifest read from the SavedModel.
        saved_model_dir: when given, the content digest is recomputed and compared.
        tensorflow_version: the TensorFlow that would serve it (``None``: not checked).

    Returns:
        Findings, errors first; empty when nothing stands in the way.
    """
    findings: list[Finding] = []
    if saved_model_dir is not None and content_digest(saved_model_dir) != manifest.content_sha256:
        findings.append(Finding(severity="error", message=(
            "the SavedModel's files differ from what Kiln wrote (content digest mismatch): "
            "download the compiled model again")))
    need = manifest.serving
    if tensorflow_version is not None:
        have = _major_minor(tensorflow_version)
        if have < _major_minor(need.tensorflow_min):
            findings.append(Finding(severity="error", message=(
                f"TensorFlow {tensorflow_version} is older than {need.tensorflow_min}, which "
                f"compiled this model: install tensorflow>={need.tensorflow_min} or compile "
                "again with the TensorFlow you serve with")))
        elif have >= _major_minor(need.tensorflow_below):
            findings.append(Finding(severity="warning", message=(
                f"TensorFlow {tensorflow_version} is newer than this model was made for "
                f"(<{need.tensorflow_below}); test it before deploying")))
    if need.xla_jit and need.tf_serving_flags:
        findings.append(Finding(severity="note", message=(
            "the model holds XLA-compiled functions: start TensorFlow Serving with "
            + " ".join(need.tf_serving_flags))))
    order = {"error": 0, "warning": 1, "note": 2}
    return sorted(findings, key=lambda f: order.get(f.severity, 3))
