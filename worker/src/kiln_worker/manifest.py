"""Write the manifest into a compiled SavedModel, and load a compiled model with its checks.

The manifest's schema and its TensorFlow-free checks live in :mod:`kiln_client.manifest`; this
module fills it from what only the worker knows (the traced model's report, the TensorFlow that
ran, the serving signature read from ``saved_model.pb``) and offers :func:`load`.
"""

from __future__ import annotations

import datetime
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from kiln_client.manifest import (
    MANIFEST_PATH,
    TF_SERVING_XLA_FLAG,
    Manifest,
    ServingRequirements,
    TensorInfo,
    check_manifest,
    content_digest,
    read_manifest,
)

__all__ = ["build_manifest", "load", "write_manifest"]

_XLA_MARK = "_XlaMustCompile"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _tensor_info(info: Any) -> TensorInfo:
    from tensorflow.python.framework import dtypes

    shape = None if info.tensor_shape.unknown_rank else [
        None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
    return TensorInfo(dtype=dtypes.as_dtype(info.dtype).name, shape=shape)


def _read_graph(saved_model_dir: Path, signature_name: str) -> tuple[Any, bool]:
    """The serving signature's ``SignatureDef`` and whether any call is marked for XLA."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    nodes = list(graph.graph_def.node) + [
        n for f in graph.graph_def.library.function for n in f.node_def]
    marked = any(_XLA_MARK in n.attr and n.attr[_XLA_MARK].b for n in nodes)
    return graph.signature_def[signature_name], marked


def _placement_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    if not report:
        return {}
    return {
        "ops_total": report.get("ops_total"),
        "ops_on_accelerator": report.get("ops_on_accelerator"),
        "on_neuron_ratio": report.get("on_neuron_ratio"),
        "subgraphs_compiled": sum(
            1 for s in report.get("subgraphs", []) if s.get("status") == "compiled"),
    }


def build_manifest(
    saved_model_dir: str | Path,
    *,
    report: dict[str, Any] | None,
    flags: str,
    placement: str,
    backend: str = "xla",
    target: str = "xla",
    job_id: str | None = None,
    upload_digests: dict[str, str] | None = None,
    signature_name: str = "serving_default",
) -> Manifest:
    """The manifest of a SavedModel just saved by the tracer (not written; see :func:`write_manifest`)."""
    import tensorflow as tf

    directory = Path(saved_model_dir)
    signature, marked = _read_graph(directory, signature_name)
    major, minor = (int(p) for p in tf.__version__.split(".")[:2])
    versions = {
        "kiln-worker": _version("kiln-worker"),
        "tensorflow": tf.__version__,
        "tf-keras": _version("tf-keras"),
        "python": platform.python_version(),
    }
    if backend == "neuron":
        versions["tensorflow-neuron"] = _version("tensorflow-neuron")
        versions["neuron-cc"] = _version("neuron-cc")
    else:
        versions["xla"] = f"bundled with tensorflow {tf.__version__}"
    return Manifest(
        job_id=job_id,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=versions, backend=backend, target=target, flags=flags, placement=placement,
        signature_name=signature_name,
        inputs={k: _tensor_info(v) for k, v in sorted(signature.inputs.items())},
        outputs={k: _tensor_info(v) for k, v in sorted(signature.outputs.items())},
        upload_digests=dict(upload_digests or {}),
        content_sha256=content_digest(directory),
        placement_summary=_placement_summary(report),
        serving=ServingRequirements(
            tensorflow_min=f"{major}.{minor}", tensorflow_below=str(major + 1), xla_jit=marked,
            tf_serving_flags=[TF_SERVING_XLA_FLAG] if marked else []),
    )


def write_manifest(saved_model_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest`` to ``assets.extra/kiln-manifest.json`` and return its path."""
    path = Path(saved_model_dir) / MANIFEST_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load(path: str | Path, *, check: bool = True) -> Any:
    """Load a compiled SavedModel as a Keras model, warning when this TensorFlow may not serve it.

    Args:
        path: the compiled SavedModel directory (as downloaded and extracted).
        check: read the manifest and warn (``UserWarning``) about each problem, with what to do.
            A SavedModel without a manifest loads with a warning.

    Returns:
        The model from ``tf.keras.models.load_model``.
    """
    import tensorflow as tf

    if check:
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            warnings.warn(f"no usable Kiln manifest: {exc}", stacklevel=2)
        else:
            for finding in check_manifest(manifest, path, tf.__version__):
                if finding.severity != "note":
                    warnings.warn(f"{finding.severity}: {finding.message}", stacklevel=2)
    return tf.keras.models.load_model(str(path))
