"""``kiln verify``: check a compiled SavedModel's manifest locally (no server, no TensorFlow)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_client._cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, print_json

if TYPE_CHECKING:
    from kiln_client.manifest import Finding, Manifest

__all__ = ["add_verify_command"]


def add_verify_command(sub: Any) -> None:
    """Add ``kiln verify`` to the ``kiln`` parser (a local command: it opens no client)."""
    p = sub.add_parser(
        "verify", help="check a compiled SavedModel's manifest (no server, no TensorFlow)",
        description="Read a compiled SavedModel's Kiln manifest, recompute its content digest "
                    "and say what serving it needs. Exit 0 when nothing stands in the way, 1 when "
                    "something does, 2 when PATH holds no readable manifest.")
    p.add_argument("path", help="compiled SavedModel directory, or compiled_model.tar.gz")
    p.add_argument("--tensorflow", metavar="VERSION",
                   help="the TensorFlow that will serve it (default: the one installed here, if any)")
    p.add_argument("--json", action="store_true", help="print the manifest and findings as JSON")
    p.set_defaults(func=None, local=_cmd_verify)


def _installed_tensorflow() -> str | None:
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from kiln_client._artifacts import extract_saved_model
    from kiln_client.manifest import ManifestError, check_manifest, read_manifest

    path = Path(args.path)
    with tempfile.TemporaryDirectory(prefix="kiln-verify-") as tmp:
        try:
            directory = path if path.is_dir() else extract_saved_model(path, Path(tmp) / "model")
            manifest = read_manifest(directory)
        except (ManifestError, OSError, ValueError) as exc:
            print(f"kiln: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        tf_version = args.tensorflow or _installed_tensorflow()
        findings = check_manifest(manifest, directory, tf_version)
    if args.json:
        print_json({"manifest": manifest.model_dump(mode="json"), "tensorflow": tf_version,
                    "findings": [f.model_dump() for f in findings]})
    else:
        _print_verification(manifest, findings, tf_version)
    return EXIT_FAILED if any(f.severity == "error" for f in findings) else EXIT_OK


def _print_verification(manifest: Manifest, findings: list[Finding], tf_version: str | None) -> None:
    summary = manifest.placement_summary
    print(f"compiled by kiln-worker {manifest.versions.get('kiln-worker', '?')} with "
          f"TensorFlow {manifest.versions.get('tensorflow', '?')} ({manifest.backend}, "
          f"placement {manifest.placement}, flags {manifest.flags or 'none'})")
    print(f"placement: {summary.get('ops_on_accelerator')} of {summary.get('ops_total')} ops "
          f"compiled in {summary.get('subgraphs_compiled')} subgraph(s)")
    print(f"serves on TensorFlow >={manifest.serving.tensorflow_min},"
          f"<{manifest.serving.tensorflow_below}" + (f" (checked against {tf_version})"
                                                      if tf_version else ""))
    for finding in findings:
        print(f"{finding.severity}: {finding.message}")
