"""Which TensorFlow versions Kiln supports, and why the range stops where it does.

The tracer reaches into TensorFlow's private modules (``tensorflow.python.*``: freezing, grappler,
kernel registry, function deserialisation), which may change in any minor release. So
``kiln-worker`` requires TensorFlow (and tf-keras, released in step) from the oldest minor Kiln
supports up to, not including, the minor after the newest one tested: a new TensorFlow minor
is added here, and to the requirement, once the suite passes on it.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

#: the TensorFlow minors Kiln supports (tf-keras follows the same numbers)
SUPPORTED = ("2.16", "2.17", "2.18", "2.19", "2.20", "2.21")
#: the private TensorFlow names the worker uses: module → attributes
PRIVATE_APIS = {
    "tensorflow.python.framework.convert_to_constants": (
        "convert_variables_to_constants_v2_as_graph",),
    "tensorflow.python.grappler.tf_optimizer": ("OptimizeGraph",),
    "tensorflow.python.training.saver": ("export_meta_graph",),
    "tensorflow.python.ops.gen_lookup_ops": ("lookup_table_export_v2",),
    "tensorflow.python.framework.kernels": ("get_registered_kernels_for_op",),
    "tensorflow.python.framework.op_def_registry": ("get",),
    "tensorflow.python.saved_model.function_deserialization": ("load_function_def_library",),
    "tensorflow.python.util.compat": ("as_str",),
    "tensorflow.python.framework.dtypes": ("as_dtype",),
}
WORKER = Path(__file__).resolve().parents[2] / "worker" / "pyproject.toml"


def _bounds() -> str:
    """``>=<oldest>,<<minor after the newest>``, as the worker must require it."""
    major, minor = SUPPORTED[-1].split(".")
    return f">={SUPPORTED[0]},<{major}.{int(minor) + 1}"


def test_the_worker_requires_exactly_the_supported_versions() -> None:
    requirements = tomllib.loads(WORKER.read_text())["project"]["dependencies"]
    pins = {m.group(1): m.group(2) for r in requirements
            if (m := re.fullmatch(r"([a-z-]+)\s*([<>=,.\d]+)", r.replace(" ", "")))}
    assert pins["tensorflow"] == pins["tf-keras"] == _bounds()


def test_the_installed_tensorflow_is_supported_and_has_the_private_apis() -> None:
    # In this process: the worker tests load TensorFlow here anyway (test_manifest_serving).
    import tensorflow as tf
    import tf_keras

    assert ".".join(tf.__version__.split(".")[:2]) in SUPPORTED, tf.__version__
    assert ".".join(tf_keras.__version__.split(".")[:2]) in SUPPORTED, tf_keras.__version__
    missing = [f"{module}.{name}" for module, names in PRIVATE_APIS.items() for name in names
               if not hasattr(importlib.import_module(module), name)]
    assert missing == []
