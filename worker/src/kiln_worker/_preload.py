"""What a compile process started ahead does before its job: import, then rehearse one compile.

Importing TensorFlow and Kiln is most of a cold start, but not all of it: the first compile in
a process also pays one-off costs that the imports leave undone (AutoGraph converting Keras's
saving wrappers, the SavedModel loader's and saver's first traces, XLA's first compile of a
shape). On the bundled MLP these came to about 0.3 s of a 1.2 s job. A process started ahead
therefore compiles a small model of Kiln's own once, through the same ``_compile`` a job runs,
in a scratch folder it deletes before it says ``ready``. Nothing of a job exists yet, so this is
Kiln's own code on Kiln's own constants; a failure only costs the job those 0.3 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def preload(rehearse: bool) -> None:
    """Import what every compile uses, run one XLA compile and, with ``rehearse``, one whole
    compile of a small model (see the module docstring)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras  # noqa: F401  (Keras 2, the tracer's model class)

    import kiln_service.logs  # noqa: F401
    import kiln_worker._inputs
    import kiln_worker._speed
    import kiln_worker.manifest
    import kiln_worker.tracer.api
    import kiln_worker.tracer.backends.xla
    import kiln_worker.tracer.passes
    import kiln_worker.tracer.reference
    import kiln_worker.tracer.tolerance  # noqa: F401

    # The first XLA compile of a process sets up the JIT; a constant of Kiln's own, no job data.
    tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)(tf.ones([2]))
    if rehearse:
        rehearse_compile()


def rehearse_compile() -> None:
    """Compile a two-layer model of Kiln's own through the job path, silently; never raises."""
    folder = Path(tempfile.mkdtemp(prefix="kiln-rehearsal-"))  # TMPDIR: inside the job folder
    try:
        with _silenced():
            _compile_small_model(folder)
    except Exception as exc:  # the job only loses the head start
        logger.debug("compile rehearsal failed: %s", exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        import tf_keras

        tf_keras.backend.clear_session()  # layer-name counters and the Keras graph start afresh


def _compile_small_model(folder: Path) -> None:
    import numpy as np
    import tf_keras

    from kiln_worker._protocol import JobSpec
    from kiln_worker.runner import EventChannel, _compile

    inputs = tf_keras.Input((4,), name="x")
    hidden = tf_keras.layers.Dense(8, activation="relu")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="tanh")(hidden))
    model.save(str(folder / "model"))
    np.savez(folder / "inputs.npz", x=np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(2, 4))
    (folder / "out").mkdir()
    spec = JobSpec(job_id="rehearsal", model_dir=str(folder / "model"),
                   output_dir=str(folder / "out"), error_file=str(folder / "error.json"),
                   example_inputs=str(folder / "inputs.npz"))
    with open(os.devnull, "w", encoding="utf-8") as null:
        _compile(spec, EventChannel(null))


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """No warning or log line of the rehearsal reaches the job's log, and logging is left as
    it was: absl's first log call installs a root handler (``logging.basicConfig``) when there
    is none, which would keep the job's own JSON or text handler out."""
    loggers = [logging.getLogger(), logging.getLogger("tensorflow")]
    saved = [(one.level, list(one.handlers)) for one in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for one in loggers:
            one.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for one, (level, handlers) in zip(loggers, saved, strict=True):
                one.setLevel(level)
                one.handlers[:] = handlers
