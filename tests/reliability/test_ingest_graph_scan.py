"""The graph scan on hand-built ``saved_model.pb`` files: how ops are reached (top-level inputs,
control inputs, function attributes, direct calls by op name), what is deliberately not judged,
and hostile protobufs refused with a 422 rather than crashing the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_support import file_entry, pb_field, pb_func_attr, pb_node, saved_model_pb, tar_bytes

from kiln_service import ingest
from kiln_service._savedmodel_proto import parse_saved_model
from kiln_service.errors import UploadRejectedError

X = pb_node("serving_default_x", "Placeholder")


def _forbidden(pb: bytes) -> list[tuple[str, str]]:
    sig = parse_saved_model(pb)[0].signatures["serving_default"]
    return [(f.op, f.node) for f in sig.forbidden]


def test_ingest_scan_follows_function_attrs_and_direct_calls() -> None:
    pb = saved_model_pb(
        [X, pb_node("call", "StatefulPartitionedCall", "serving_default_x", attrs={"f": pb_func_attr("outer")}),
         pb_node("legacy", "inner_fn", "^call")],
        {"outer": [pb_node("w", "WriteFile")], "inner_fn": [pb_node("r", "ReadFile")],
         "unused": [pb_node("s", "SaveV2")]},
        "legacy:0")
    assert sorted(_forbidden(pb)) == [("ReadFile", "inner_fn/r"), ("WriteFile", "outer/w")]


def test_ingest_scan_judges_only_what_the_signature_reaches() -> None:
    pb = saved_model_pb(
        [X, pb_node("y", "Identity", "serving_default_x"),
         pb_node("saver", "StatefulPartitionedCall", attrs={"f": pb_func_attr("save_fn")})],
        {"save_fn": [pb_node("s", "SaveV2"), pb_node("m", "MergeV2Checkpoints")]}, "y:0")
    assert _forbidden(pb) == []


@pytest.mark.parametrize(("stream", "refused"), [
    (b"file:///tmp/out.txt", True), (b"FILE:///tmp/out.txt", True), (b"stderr", False),
    (b"log(info)", False)])
def test_ingest_scan_print_to_file_only(stream: bytes, refused: bool) -> None:
    printer = pb_node("p", "PrintV2", "serving_default_x", attrs={"output_stream": pb_field(2, stream)})
    pb = saved_model_pb([X, printer, pb_node("y", "Identity", "serving_default_x", "^p")], {}, "y:0")
    assert _forbidden(pb) == ([("PrintV2", "p")] if refused else [])


def _read(tmp_path: Path, pb: bytes) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(tar_bytes([file_entry("model/saved_model.pb", pb)]))
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    info = ingest.inspect_archive(archive, max_members=10, max_total_bytes=1 << 30, scratch=scratch)
    ingest.select_signature(ingest.read_signatures(info), "serving_default")


def test_ingest_deeply_nested_function_attrs_refused(tmp_path: Path) -> None:
    attr = pb_func_attr("f0")
    for i in range(1, 5000):  # NameAttrList.attr → AttrValue.func → … : would exhaust the stack
        attr = pb_field(10, pb_field(1, f"f{i}") + pb_field(2, pb_field(1, "a") + pb_field(2, attr)))
    pb = saved_model_pb([X, pb_node("y", "PartitionedCall", "serving_default_x", attrs={"f": attr})],
                        {}, "y:0")
    with pytest.raises(UploadRejectedError) as err:
        _read(tmp_path, pb)
    assert err.value.code == "invalid_saved_model" and "nested" in (err.value.detail or "")


def test_ingest_truncated_graph_refused(tmp_path: Path) -> None:
    good = saved_model_pb([X, pb_node("y", "ReadFile", "serving_default_x")], {}, "y:0")
    with pytest.raises(UploadRejectedError) as err:
        _read(tmp_path, good[:-9] + b"\x0a\xff\xff\x7f")
    assert err.value.code == "invalid_saved_model"
    with pytest.raises(UploadRejectedError) as err:
        _read(tmp_path, good)
    assert err.value.code == "forbidden_ops" and "ReadFile at y" in (err.value.detail or "")


def test_ingest_scan_is_an_allowlist(tmp_path: Path) -> None:
    """Any op type not on the list is refused, inside functions too, with the op, where it is
    and why; the known file and dataset ops keep their own reasons and come first."""
    pb = saved_model_pb(
        [X, pb_node("call", "StatefulPartitionedCall", "serving_default_x",
                    attrs={"f": pb_func_attr("body")}),
         pb_node("y", "MatMul", "call", "serving_default_x")],
        {"body": [pb_node("a", "Relu"), pb_node("b", "MyCustomKernel"), pb_node("c", "ReadFile"),
                  pb_node("d", "DatasetFromGraph"), pb_node("e", "WriteFile"),
                  pb_node("f", "ReduceDataset"), pb_node("g", "TensorListStack")]},
        "y:0")
    assert sorted(_forbidden(pb)) == [
        ("DatasetFromGraph", "body/d"), ("MyCustomKernel", "body/b"), ("ReadFile", "body/c"),
        ("ReduceDataset", "body/f"), ("WriteFile", "body/e")]
    with pytest.raises(UploadRejectedError) as err:
        _read(tmp_path, pb)
    detail = err.value.detail or ""
    assert err.value.code == "forbidden_ops", detail
    assert "not allowed: DatasetFromGraph, ReadFile, WriteFile, MyCustomKernel, ReduceDataset" in detail
    assert "MyCustomKernel at body/b (not on Kiln's list of allowed op types" in detail
    assert "ReadFile at body/c (reads or writes files" in detail
    assert "serialised graph string" in detail and "docs/errors.md" in detail


def test_ingest_allowlist_excludes_every_known_forbidden_op() -> None:
    from kiln_service._allowed_ops import ALLOWED_OPS, LOAD_TIME_ONLY
    from kiln_service._graph_scan import FORBIDDEN_OPS

    assert not ALLOWED_OPS & set(FORBIDDEN_OPS)
    assert set(FORBIDDEN_OPS) >= LOAD_TIME_ONLY  # refused in a signature, allowed when loading
    assert {"MatMul", "StatefulPartitionedCall", "LookupTableFindV2", "StatelessWhile",
            "TensorListStack", "ReadVariableOp", "PrintV2"} <= ALLOWED_OPS
