"""Evidence for the op allowlist (``kiln_service._allowed_ops``): TensorFlow's own op families.

    python scripts/op_allowlist.py            # each category's ops, from TensorFlow's op modules
    python scripts/op_allowlist.py --diff     # what TensorFlow has that the list does not, and back

Each category of the allowlist is drawn from TensorFlow's generated op modules
(``tensorflow.python.ops.gen_*_ops``, one per kernel family) minus the ops excluded by name
below; the families not listed (file and dataset I/O, checkpoints, summaries, debugging, Python,
collectives, TPU, training updates, queues) are left out whole. The zoo test
(``tests/reliability/test_op_allowlist.py``) checks that every zoo model's ops are on the list.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: category → TensorFlow op modules it takes whole (see kiln_service._allowed_ops for the why)
FAMILIES: dict[str, tuple[str, ...]] = {
    "ARRAY": ("array",),
    "MATH": ("math", "special_math", "bitwise", "linalg", "spectral", "manip", "sparse", "set",
             "count", "ragged_array", "ragged_conversion", "ragged_math"),
    "NN": ("nn", "rnn", "cudnn_rnn", "ctc", "candidate_sampling", "uniform_quant"),
    "IMAGE_AUDIO": ("image", "audio"),
    "RANDOM": ("random", "stateless_random", "stateless_random_ops_v2", "stateful_random",
               "random_index_shuffle"),
    "STRINGS": ("string", "parsing", "decode_proto", "encode_proto"),
    "CONTROL_FLOW": ("control_flow", "functional"),
    "STATE": ("resource_variable", "state", "list", "map", "optional", "composite_tensor"),
    "LOOKUP": ("lookup",),
}
#: ops of those families left out: a file, another host, or the end of the process
EXCLUDED = {"ImmutableConst", "Abort", "RemoteCall", "InitializeTableFromTextFile",
            "InitializeTableFromTextFileV2"}
#: ops taken one by one from families otherwise left out
SINGLES: dict[str, tuple[str, ...]] = {
    "STATE": ("DynamicPartition", "DynamicStitch", "ParallelDynamicStitch"),
    "LOGGING": ("Assert", "Print", "PrintV2", "Timestamp"),
}


def family_ops() -> dict[str, set[str]]:
    """Op type names per TensorFlow op module (``gen_math_ops`` → ``math``)."""
    import tensorflow.python.ops as ops_package

    folder = Path(ops_package.__path__[0])
    found: dict[str, set[str]] = {}
    for path in sorted(folder.glob("gen_*.py")):
        family = path.stem.removeprefix("gen_").removesuffix("_ops")
        if path.stem.endswith("_ops_v2"):
            family = path.stem.removeprefix("gen_")
        found[family] = set(re.findall(r'_apply_op_helper\(\s*"(\w+)"', path.read_text()))
    return found


def categories() -> dict[str, set[str]]:
    """The allowlist's categories as TensorFlow defines its op families."""
    families = family_ops()
    out: dict[str, set[str]] = {}
    for name, modules in FAMILIES.items():
        out[name] = set().union(*(families[m] for m in modules)) - EXCLUDED
    data_flow = families["data_flow"]
    out["STATE"] |= {op for op in data_flow if op.startswith(("TensorArray", "Stack"))}
    for name, ops in SINGLES.items():
        out.setdefault(name, set()).update(ops)
    return out


def main(argv: list[str]) -> None:
    computed = categories()
    if "--diff" in argv:
        from kiln_service import _allowed_ops

        listed = set(_allowed_ops.ALLOWED_OPS)
        every = set().union(*computed.values())
        print("in TensorFlow's families, not listed:", sorted(every - listed))
        print("listed, not in TensorFlow's families:", sorted(listed - every))
        return
    for name, ops in computed.items():
        body = textwrap.fill(" ".join(sorted(ops)), 96, initial_indent="    ",
                             subsequent_indent="    ")
        print(f'{name} = _names("""\n{body}\n""")\n')


if __name__ == "__main__":
    main(sys.argv[1:])
