"""The round-trip harness itself, on a model every path already handles (an MLP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.tracer.conftest import mlp
from tests.tracer.roundtrip import assert_close, check_roundtrip


@pytest.mark.parametrize("fresh_process", [False, True], ids=["in-process", "fresh-process"])
def test_mlp_round_trip(tmp_path: Path, fresh_process: bool) -> None:
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(1, 32)).astype("float32")
    x4 = rng.normal(size=(4, 32)).astype("float32")
    result = check_roundtrip(mlp(), x1, x4, tmp_path, fresh_process=fresh_process)
    assert result.in_memory_report["ops_total"] > 0
    assert result.saved_report["ops_total"] > 0
    assert next(iter(result.served_outputs.values())).shape == (4, 10)


def test_assert_close_catches_a_difference() -> None:
    want = {"y": np.array([1.0, 2.0])}
    with pytest.raises(AssertionError, match="output y"):
        assert_close("probe", want, {"y": np.array([1.0, 2.1])}, rtol=1e-3)
    assert_close("probe", want, {"y": np.array([1.0, 2.0001])}, rtol=1e-3)
