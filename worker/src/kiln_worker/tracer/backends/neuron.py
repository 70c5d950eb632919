"""The ``neuron`` backend: hand the whole trace to AWS's ``tensorflow.neuron.trace``.

AWS's Neuron compiler (``tensorflow-neuron[cc]``) is published only on AWS's own package index
and runs on Inf1 hosts with Python 3.10 and TensorFlow 2.10. Where it is importable, this backend
delegates to it unchanged: tensorflow-neuron partitions, compiles to NEFF and returns its own
keras.Model; Kiln only passes the flags and attaches its report. Where it is absent, asking for the
backend raises :class:`BackendUnavailableError` saying what to install.

tensorflow-neuron reads its options from the ``NEURON_CC_FLAGS`` environment variable (deep inside
its compiler driver), so the flags are put there for the duration of the call and the previous
value is restored afterwards. The environment is process-wide, hence one lock around the call.

Nothing here imports ``tensorflow.neuron`` at module import time.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from kiln_client.flags import CompilerFlags
from kiln_worker.tracer.errors import BackendUnavailableError, TraceError

__all__ = ["INSTALL_COMMAND", "neuron_available", "trace_with_neuron"]

logger = logging.getLogger(__name__)

#: What to run on an Inf1 host (Python 3.10) to make this backend available.
INSTALL_COMMAND = (
    "pip install tensorflow-neuron[cc] --extra-index-url=https://pip.repos.neuron.amazonaws.com"
)
_ENV_VAR = "NEURON_CC_FLAGS"
# tensorflow-neuron exposes itself as `tensorflow.neuron`; `tensorflow_neuron` is its real package.
_MODULE_NAMES = ("tensorflow.neuron", "tensorflow_neuron")
_ENV_LOCK = threading.Lock()


def neuron_available() -> bool:
    """Tell whether AWS's ``tensorflow.neuron`` can be imported here.

    Returns:
        True when ``tensorflow.neuron`` (or ``tensorflow_neuron``) imports and has ``trace``.
    """
    try:
        _load_neuron()
    except BackendUnavailableError:
        return False
    return True


def trace_with_neuron(
    func: Any,
    example_inputs: Any,
    subgraph_builder_function: Callable[[Any], bool] | None,
    flags: CompilerFlags,
) -> Any:
    """Trace ``func`` with AWS's ``tensorflow.neuron.trace``, passing ``flags`` through.

    Args:
        func: The keras.Model or callable to trace, given to tensorflow-neuron unchanged.
        example_inputs: The example inputs, unchanged (the seed's calling conventions apply).
        subgraph_builder_function: Optional ``NodeDef -> bool`` placement predicate, unchanged.
        flags: Parsed flags; they reach tensorflow-neuron as ``NEURON_CC_FLAGS`` during the call.

    Returns:
        tensorflow-neuron's keras.Model, with ``model.report`` (Kiln's report dict, backend
        ``"neuron"``) and ``model.on_neuron_ratio`` (tensorflow-neuron's, when it sets one).

    Raises:
        BackendUnavailableError: tensorflow-neuron is not importable here; says what to install.
        TraceError: tensorflow-neuron failed; the original exception is chained.
    """
    neuron = _load_neuron()
    flags_text = flags.to_string()
    logger.info(
        "tracing with tensorflow-neuron %s, %s=%r",
        getattr(neuron, "__version__", "?"),
        _ENV_VAR,
        flags_text,
    )
    started = time.perf_counter()
    with _neuron_cc_flags(flags_text):
        try:
            model = neuron.trace(
                func, example_inputs, subgraph_builder_function=subgraph_builder_function
            )
        except TraceError:
            raise
        except Exception as err:
            raise TraceError(
                f"tensorflow.neuron.trace failed ({type(err).__name__}: {err}); "
                f"run again with {_ENV_VAR}='--workdir DIR' to keep the compiler's logs",
                "neuron",
            ) from err
    report = _build_report(neuron, model, flags, time.perf_counter() - started)
    _attach(model, "report", report)
    if report["on_neuron_ratio"] is not None and getattr(model, "on_neuron_ratio", None) is None:
        _attach(model, "on_neuron_ratio", report["on_neuron_ratio"])
    return model


def _load_neuron() -> ModuleType:
    """Import tensorflow-neuron, or raise BackendUnavailableError saying what to install."""
    reasons: list[str] = []
    for name in _MODULE_NAMES:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            reasons.append(f"import {name}: {err}")
            continue
        except Exception as err:  # installed but broken, e.g. built for another TensorFlow
            reasons.append(f"import {name}: {type(err).__name__}: {err}")
            continue
        if callable(getattr(module, "trace", None)):
            return module
        reasons.append(f"{name} has no trace()")
    raise BackendUnavailableError(_unavailable_message("; ".join(reasons)), "backend")


def _unavailable_message(reason: str) -> str:
    here = f"Python {platform.python_version()}"
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        here += f", TensorFlow {getattr(tf, '__version__', '?')}"
    return (
        "The 'neuron' backend needs AWS's tensorflow-neuron, which is not importable here "
        f"({reason}). On an Inf1 host with Python 3.10, install it with: {INSTALL_COMMAND} "
        f"(it supports Python up to 3.10 and TensorFlow 2.10; this is {here}). "
        "Otherwise use the portable backend: backend='xla' or KILN_TRACE_BACKEND=xla."
    )


@contextlib.contextmanager
def _neuron_cc_flags(text: str) -> Iterator[None]:
    """Set ``NEURON_CC_FLAGS`` to ``text`` for the block, then restore the previous value."""
    with _ENV_LOCK:
        previous = os.environ.get(_ENV_VAR)
        os.environ[_ENV_VAR] = text
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(_ENV_VAR, None)
            else:
                os.environ[_ENV_VAR] = previous


def _build_report(
    neuron: ModuleType, model: Any, flags: CompilerFlags, seconds: float
) -> dict[str, Any]:
    """Kiln's report for a tensorflow-neuron trace: what Kiln knows without its internals."""
    ratio = getattr(model, "on_neuron_ratio", None)
    ratio = float(ratio) if isinstance(ratio, (int, float)) else None
    tf = sys.modules.get("tensorflow")
    warnings = [
        "placement was decided by tensorflow-neuron; per-subgraph details are in its "
        "--workdir artifacts, not in this report"
    ]
    if ratio is not None and ratio < 0.5:
        warnings.append(f"only {ratio:.0%} of the operators run on the accelerator")
    return {
        "backend": "neuron",
        "tensorflow_version": getattr(tf, "__version__", None),
        "neuron_version": getattr(neuron, "__version__", None),
        "flags": flags.model_dump(mode="json"),
        "ops_total": None,
        "ops_on_accelerator": None,
        "on_neuron_ratio": ratio,
        "subgraphs": [],
        "cpu_ops": [],
        "dynamic_batch": flags.dynamic_batch_size,
        "warnings": warnings,
        "timings": {"trace_seconds": round(seconds, 3)},
    }


def _attach(model: Any, name: str, value: Any) -> None:
    # Keras wraps dicts assigned to a Model's attributes into tracked structures; bypass that so
    # the report stays a plain JSON-serialisable dict and is not saved as part of the model.
    try:
        object.__setattr__(model, name, value)
    except (AttributeError, TypeError):
        setattr(model, name, value)
