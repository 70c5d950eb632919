"""Find the ops a serving signature would run that are not allowed, without TensorFlow.

Allowed are the op types of :mod:`._allowed_ops` (pure tensor computation, variables, tables,
control flow); everything else is refused, the known file, network and host-escaping ops with
their own reason (``FORBIDDEN_OPS``), any other type as not on the list.

A SavedModel keeps nearly all of its ops in the graph's function library; the top-level graph mostly
holds ``StatefulPartitionedCall`` nodes that call those functions. So the scan indexes the graph's
nodes and every library function, then walks from a signature's output tensors back through the
top-level nodes and into every function they call (``f``, ``then_branch``, ``body``, dataset ``map``
functions: any attribute holding a function), recursively. Only what the signature can reach is
judged: the SavedModel's own saver functions (``SaveV2``/``RestoreV2``) hang off other top-level
nodes and are not reached from a serving signature. The load-time init op
(``__saved_model_init_op``, run by ``tf.saved_model.load`` before any signature) is judged too.

This is a first check that gives an early, clear refusal; the compile sandbox (bubblewrap: own
mount, PID and network namespaces, only the job folder writable; see ``kiln_worker._sandbox``)
is the defence that does not depend on it. Ops that rebuild a pipeline from a serialised string
(``DatasetFromGraph``) are refused because their contents cannot be judged.

Wire layout used (``tensorflow/core/framework``)::

    MetaGraphDef     2: GraphDef graph_def
    GraphDef         1: repeated NodeDef node, 2: FunctionDefLibrary library
    FunctionDefLib.  1: repeated FunctionDef function
    FunctionDef      1: OpDef signature (1: string name), 3: repeated NodeDef node_def
    NodeDef          1: name, 2: op, 3: repeated input, 5: map<string, AttrValue> attr
    AttrValue        1: ListValue list (9: repeated NameAttrList func), 2: bytes s,
                     10: NameAttrList func (1: name, 2: map<string, AttrValue> attr)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from kiln_client._savedmodel import LEN, ProtoDecodeError, fields, message, text
from kiln_service._allowed_ops import ALLOWED_OPS, LOAD_TIME_ONLY

__all__ = ["FORBIDDEN_OPS", "LOAD_TIME_ALLOWED", "Finding", "GraphIndex", "index_graph"]

_FILES = "reads or writes files on the compile host"
_DATASET_FILES = "a tf.data source or sink that reads or writes files"
_NETWORK = "talks to other hosts over the network"

_NOT_LISTED = ("not on Kiln's list of allowed op types (tensor computation, variables, lookup "
               "tables, control flow; see the forbidden_ops entry of docs/errors.md)")

#: Op type → why a serving signature may not run it (a clearer reason than ``_NOT_LISTED`` for the
#: ops known to reach outside the process; none of them is in ``ALLOWED_OPS``). Deliberately left out: ``Print``/``PrintV2``
#: to stderr (no file; ``PrintV2`` to ``file://`` is caught by its attribute), ``Fingerprint`` and
#: ``DatasetFingerprint`` (pure hashes), ``ShardedFilename``/``ShardedFilespec`` (string formatting
#: only), ``Reader*`` ops (they need one of the reader ops below to do anything), ``DecodeCSV`` and
#: ``ParseExample`` (parse tensors already in memory), ``IdentityReader`` (reads no file).
FORBIDDEN_OPS: dict[str, str] = {
    **dict.fromkeys(("ReadFile", "WriteFile", "MatchingFiles"), _FILES),
    "ImmutableConst": "memory-maps a file of the compile host",
    **dict.fromkeys(("Save", "SaveSlices", "SaveV2", "Restore", "RestoreSlice", "RestoreV2",
                     "MergeV2Checkpoints", "LoadAndRemapMatrix"),
                    "reads or writes checkpoint files (fine in the SavedModel's own saver, "
                    "not inside a serving signature)"),
    **dict.fromkeys(("InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
                     "GenerateVocabRemapping", "RecordInput"), _FILES),
    **dict.fromkeys(("TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset",
                     "FixedLengthRecordDatasetV2", "TextLineDataset", "CSVDataset", "CSVDatasetV2",
                     "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset",
                     "ExperimentalLMDBDataset", "MatchingFilesDataset",
                     "ExperimentalMatchingFilesDataset", "SnapshotDataset", "SnapshotDatasetV2",
                     "SnapshotDatasetReader", "SnapshotNestedDatasetReader", "SnapshotChunkDataset",
                     "ListSnapshotChunksDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset",
                     "DistributedSave", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
                     "CacheDataset", "CacheDatasetV2"), _DATASET_FILES),
    **dict.fromkeys(("TFRecordReader", "TFRecordReaderV2", "TextLineReader", "TextLineReaderV2",
                     "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "WholeFileReader",
                     "WholeFileReaderV2", "LMDBReader"), "a TF1 reader that reads files"),
    **dict.fromkeys(("SummaryWriter", "CreateSummaryFileWriter", "CreateSummaryDbWriter",
                     "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary",
                     "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
                     "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter",
                     "CloseSummaryWriter", "StatsAggregatorSetSummaryWriter"),
                    "writes summary event files"),
    **dict.fromkeys(("DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
                     "DebugNumericSummary", "DebugNumericSummaryV2"),
                    "a debugger op that can write to file:// or grpc:// URLs"),
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"),
                    "runs arbitrary Python in the host process"),
    "FileSystemSetConfiguration": "reconfigures the host's file systems",
    **dict.fromkeys(("DatasetFromGraph",),
                    "rebuilds a tf.data pipeline from a serialised graph string, whose ops no scan "
                    "can see (they may read files or open connections)"),
    **dict.fromkeys(("DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3",
                     "DataServiceDatasetV4", "RegisterDataset", "RegisterDatasetV2",
                     "Rpc", "TryRpc", "RpcClient", "RpcServer", "RpcServerStart",
                     "RpcServerRegister", "RpcCall", "RpcCheckStatus", "RpcGetValue",
                     "GcsConfigureCredentials", "GcsConfigureBlockCache"), _NETWORK),
    **dict.fromkeys(("CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3",
                     "CollectiveGather", "CollectiveGatherV2", "CollectiveBcastSend",
                     "CollectiveBcastSendV2", "CollectiveBcastRecv", "CollectiveBcastRecvV2",
                     "CollectiveAllToAllV2", "CollectiveAllToAllV3", "CollectiveReduceScatterV2",
                     "CollectiveInitializeCommunicator", "CollectivePermute",
                     "CollectiveAssignGroupV2"), "a collective that exchanges tensors with other hosts"),
}
_PRINT_TO_FILE = "PrintV2 with output_stream file://… writes a file on the compile host"
_DESCRIPTOR_FILE = ("DecodeProtoV2/EncodeProto with a descriptor_source other than local:// reads "
                    "a descriptor file of the compile host")
#: Allowed in the load-time init op (``__saved_model_init_op``) only: lookup tables built from
#: vocabulary files read the SavedModel's own ``assets/`` there. (Any file they could name instead
#: is the compile sandbox's to guard.)
LOAD_TIME_ALLOWED = LOAD_TIME_ONLY
#: Deepest nesting of function-valued attributes followed (real graphs use a few levels).
MAX_ATTR_DEPTH = 64


@dataclass(frozen=True)
class Finding:
    """A forbidden op a signature reaches."""

    op: str
    node: str
    """``node`` for a top-level node, ``function/node`` inside a library function."""
    reason: str


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    print_to_file: bool = False
    descriptor_file: bool = False


@dataclass
class GraphIndex:
    """The graph's top-level nodes and library functions, reduced to what the scan needs."""

    nodes: dict[str, _Node] = field(default_factory=dict)
    functions: dict[str, list[_Node]] = field(default_factory=dict)

    def findings(self, output_tensors: list[str]) -> list[Finding]:
        """Return the ops reachable from ``output_tensors`` (``node:0`` names) that are not allowed.

        Args:
            output_tensors: The signature's output tensor names.

        Returns:
            Every finding, top-level nodes first, in walk order.
        """
        found: list[Finding] = []
        for node, where in self.reached(output_tensors):
            self._judge(node, where, found)
        return found

    def reached(self, output_tensors: list[str]) -> Iterator[tuple[_Node, str]]:
        """Yield each node ``output_tensors`` reach, with where it is (as in :class:`Finding`)."""
        todo = [_node_name(t) for t in output_tensors]
        seen_nodes: set[str] = set()
        calls: list[str] = []
        while todo:
            name = todo.pop()
            node = self.nodes.get(name)
            if name in seen_nodes or node is None:
                continue
            seen_nodes.add(name)
            yield node, node.name
            calls.extend(self._called(node))
            todo.extend(_node_name(i) for i in node.inputs)
        seen_functions: set[str] = set()
        while calls:
            fname = calls.pop()
            if fname in seen_functions:
                continue
            seen_functions.add(fname)
            for node in self.functions.get(fname, []):
                yield node, f"{fname}/{node.name}"
                calls.extend(self._called(node))

    def _called(self, node: _Node) -> list[str]:
        # A node whose op type names a library function calls it directly (the older form).
        return [*node.functions, node.op] if node.op in self.functions else node.functions

    def _judge(self, node: _Node, where: str, found: list[Finding]) -> None:
        reason = FORBIDDEN_OPS.get(node.op)
        if reason is None and node.print_to_file:
            reason = _PRINT_TO_FILE
        if reason is None and node.descriptor_file:
            reason = _DESCRIPTOR_FILE
        if reason is None and node.op not in ALLOWED_OPS and node.op not in self.functions:
            reason = _NOT_LISTED
        if reason is not None:
            found.append(Finding(op=node.op, node=where, reason=reason))


def _node_name(tensor: str) -> str:
    """``^a`` (control input), ``a:1`` and ``a`` all name node ``a``."""
    return tensor.lstrip("^").split(":", 1)[0]


def _attr_functions(buf: memoryview, out: list[str], depth: int = 0) -> bytes | None:
    """Add the function names an ``AttrValue`` holds to ``out``; return its ``s`` bytes, if any."""
    if depth > MAX_ATTR_DEPTH:
        raise ProtoDecodeError(f"function attributes nested more than {MAX_ATTR_DEPTH} deep")
    s: bytes | None = None
    for number, wire, value in fields(buf):
        if number == 10 and wire == LEN:
            _name_attr_list(message(value), out, depth)
        elif number == 1 and wire == LEN:
            for lnum, lwire, lval in fields(message(value)):
                if lnum == 9 and lwire == LEN:
                    _name_attr_list(message(lval), out, depth)
        elif number == 2 and wire == LEN:
            s = bytes(message(value))
    return s


def _name_attr_list(buf: memoryview, out: list[str], depth: int) -> None:
    for number, _, value in fields(buf):
        if number == 1:
            out.append(text(value))
        elif number == 2:  # nested attrs may name functions too
            for enum, _, evalue in fields(message(value)):
                if enum == 2:
                    _attr_functions(message(evalue), out, depth + 1)


def _node(buf: memoryview) -> _Node:
    node = _Node(name="", op="")
    for number, _, value in fields(buf):
        if number == 1:
            node.name = text(value)
        elif number == 2:
            node.op = text(value)
        elif number == 3:
            node.inputs.append(text(value))
        elif number == 5:
            key, attr = "", memoryview(b"")
            for enum, _, evalue in fields(message(value)):
                if enum == 1:
                    key = text(evalue)
                elif enum == 2:
                    attr = message(evalue)
            s = _attr_functions(attr, node.functions)
            if key == "output_stream" and s is not None and s.lower().startswith(b"file://"):
                node.print_to_file = True
            if key == "descriptor_source" and s is not None and s not in (b"", b"local://"):
                node.descriptor_file = True
    return node


def _function(buf: memoryview) -> tuple[str, list[_Node]]:
    name, nodes = "", []
    for number, _, value in fields(buf):
        if number == 1:
            name = next((text(v) for n, _, v in fields(message(value)) if n == 1), "")
        elif number == 3:
            nodes.append(_node(message(value)))
    return name, nodes


def index_graph(buf: memoryview) -> GraphIndex:
    """Decode a ``GraphDef`` into a :class:`GraphIndex`.

    Args:
        buf: The serialized ``GraphDef``.

    Returns:
        Its nodes and library functions.

    Raises:
        ProtoDecodeError: The bytes are not a well-formed ``GraphDef``.
    """
    index = GraphIndex()
    for number, _, value in fields(buf):
        if number == 1:
            node = _node(message(value))
            index.nodes[node.name] = node
        elif number == 2:
            for lnum, _, lval in fields(message(value)):
                if lnum == 1:
                    fname, nodes = _function(message(lval))
                    index.functions[fname] = nodes
    return index
