"""Timing for ``placement="measured"``: is a compiled subgraph (or model) clearly slower?

Two callables run on the same arguments in interleaved rounds (the order alternates); each round
times one block of calls of each, back to back, so the two blocks of a round see the same machine.
Each round therefore gives one paired ratio, compiled time over plain time, in which a change of
the machine's speed between rounds cancels out. The estimate is the median ratio, and the noise is
how much the rounds disagree: half the spread of the ratios left once the fastest and slowest
quarter are set aside, relative to the median. (Comparing each side's best round instead, and
their own spreads, took 5 ms blocks' scheduling jitter for noise: margins of 20-50% let subgraphs
1.3x slower than TensorFlow through.) The median's uncertainty is that noise shrunk by the square
root of the rounds (the noise itself at ``ROUNDS`` rounds). A compiled version is *clearly
slower* only when its median ratio exceeds 1 by more than ``max(MIN_MARGIN, uncertainty)``; anything
closer is kept. When the median lies within the uncertainty of that threshold, the comparison is
undecided and more rounds are run (up to ``MAX_ROUNDS``), so a version 20% slower on a busy
machine is not kept by luck, and one near the threshold is judged on more evidence. On a busy
machine the rounds disagree more and fewer subgraphs are rejected, never more, so a placement
does not flip with the load.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)
#: Rounds of interleaved timing per comparison.
ROUNDS = 7
#: The most rounds an undecided comparison is extended to.
MAX_ROUNDS = 25
#: Target duration of one timed block (the call count is calibrated on the plain version).
BLOCK_SECONDS = 0.005
#: The smallest slowdown counted as "clearly slower" on a quiet machine.
MIN_MARGIN = 0.05
#: Untimed calls at the start of each block. The first call after the other version ran pays
#: for the caches and threads that one left behind, and not evenly: an NCHW CNN at batch 8 took
#: 1.34 ms per call through oneDNN alternating with XLA and 0.96 ms in a stream, XLA 1.25 and
#: 1.11 ms. Timed, that first call made 5 ms blocks (4 calls) rate XLA 1.03-1.11x TensorFlow's
#: time where a stream of calls, as a served model sees, measures 1.18-1.24x.
WARM_CALLS = 1


@dataclass(frozen=True)
class Rule:
    """How one kind of comparison is timed and judged."""

    rounds: int = ROUNDS
    max_rounds: int = MAX_ROUNDS
    #: The smallest slowdown counted as "clearly slower".
    min_margin: float = MIN_MARGIN
    block_seconds: float = BLOCK_SECONDS
    #: Untimed calls of each side, in turns, before the rounds, for at least this long each.
    warm_seconds: float = 0.0


#: A subgraph alone: many per model, each cheap to time; kept unless clearly slower (5%).
SUBGRAPH = Rule()
#: A whole model (a candidate, the baseline it is judged against, the switch by batch size):
#: what these choose is what serves, and their choices are near ties more often (an NCHW CNN
#: or MobileNetV2 at batch 8, compiled or not, within 10%). Timed longer and judged closer:
#: 11 rounds of 20 ms blocks after 0.1 s of untimed calls (a oneDNN graph called for the first
#: time at a new batch size ran 1.3-1.5 ms a call for about 40 calls, then 0.95 ms), clearly
#: slower beyond 2%. With 5% and 7 rounds of 5 ms, MobileNetV2's subgraphs were kept at batch 8
#: as 2.5% slower than its frozen graph, and served 5-13% slower.
WHOLE_MODEL = Rule(rounds=11, max_rounds=31, min_margin=0.02, block_seconds=0.02,
                   warm_seconds=0.1)


@dataclass(frozen=True)
class Measurement:
    """Interleaved timings of a compiled and a plain version (seconds per call, per round)."""

    compiled_seconds: tuple[float, ...]
    plain_seconds: tuple[float, ...]
    calls_per_round: int
    #: The smallest slowdown that counts as clearly slower (the rule it was timed by).
    min_margin: float = MIN_MARGIN
    #: When it was timed, if it came from the timing cache (``timing_cache``) rather than being
    #: timed now; not part of the timing, so equal measurements compare equal either way.
    cached_at: str | None = field(default=None, compare=False)

    @property
    def ratios(self) -> list[float]:
        """Each round's compiled time over its plain time, sorted."""
        pairs = zip(self.compiled_seconds, self.plain_seconds, strict=True)
        return sorted(c / max(p, 1e-12) for c, p in pairs)

    @property
    def speedup(self) -> float:
        """Plain time over compiled time, from the median round (above 1: compiled is faster)."""
        return 1.0 / max(statistics.median(self.ratios), 1e-12)

    @property
    def noise(self) -> float:
        """Half the spread of the middle rounds' ratios, relative to the median ratio."""
        ratios = self.ratios
        trim = len(ratios) // 4
        middle = ratios[trim:len(ratios) - trim]
        return (middle[-1] - middle[0]) / 2 / max(statistics.median(ratios), 1e-12)

    @property
    def uncertainty(self) -> float:
        """How far the median ratio may be off: the noise, shrunk by the square root of the
        rounds (relative to ``ROUNDS`` rounds, where it is the noise itself)."""
        return self.noise * math.sqrt(ROUNDS / max(len(self.compiled_seconds), 1))

    @property
    def margin(self) -> float:
        """How much slower the compiled version must be to count as clearly slower."""
        return max(self.min_margin, self.uncertainty)

    @property
    def clearly_slower(self) -> bool:
        """Whether the compiled version is slower than plain beyond the margin."""
        return self.speedup * (1.0 + self.margin) < 1.0

    @property
    def undecided(self) -> bool:
        """Whether the median ratio lies within its uncertainty of the threshold (more rounds
        would settle on which side it is)."""
        ratio = 1.0 / self.speedup
        return abs(ratio - (1.0 + self.margin)) < self.uncertainty

    def as_dict(self) -> dict[str, Any]:
        """The measurement as the report shows it (milliseconds)."""
        return {
            "compiled_ms": round(min(self.compiled_seconds) * 1e3, 5),
            "plain_ms": round(min(self.plain_seconds) * 1e3, 5),
            "compiled_ms_median": round(statistics.median(self.compiled_seconds) * 1e3, 5),
            "plain_ms_median": round(statistics.median(self.plain_seconds) * 1e3, 5),
            "rounds": len(self.compiled_seconds),
            "calls_per_round": self.calls_per_round,
            "speedup": round(self.speedup, 4),
            "noise": round(self.noise, 4),
            "uncertainty": round(self.uncertainty, 4),
            "margin": round(self.margin, 4),
            "clearly_slower": self.clearly_slower,
            **({"cached_at": self.cached_at} if self.cached_at is not None else {}),
        }


class TimingStore(Protocol):
    """Where one comparison's measurement may be kept between traces (``timing_cache``)."""

    def load(self) -> Measurement | None:
        """The stored measurement, or ``None`` (none stored, or not usable)."""

    def save(self, measurement: Measurement) -> None:
        """Keep ``measurement`` for the next trace; never raises."""


def _block(fn: Callable[..., Any], args: list[Any], calls: int) -> float:
    """Seconds per call over ``calls`` calls, after ``WARM_CALLS`` untimed ones."""
    for _ in range(WARM_CALLS):
        fn(*args)
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - start) / calls


def compare(
    compiled: Callable[..., Any],
    plain: Callable[..., Any],
    args: list[Any],
    rule: Rule = SUBGRAPH,
    store: TimingStore | None = None,
) -> Measurement:
    """Time ``compiled`` against ``plain`` on ``args`` in interleaved rounds (both warmed up)
    by ``rule``; an undecided comparison gets two more rounds at a time, up to its maximum.

    With ``store``, a measurement found there is returned and nothing is timed, so a model
    traced again places as it did; a new measurement is saved there. Both sides are warmed up
    all the same: their first calls trace functions, and a hit must leave the process as a miss
    does (TensorFlow numbers functions as it traces them, and the saved model keeps the names).
    """
    for _ in range(2):  # warm up (XLA compiles, caches fill)
        compiled(*args)
        plain(*args)
    known = store.load() if store is not None else None
    if known is not None:
        logger.debug("measure: from the timing cache: %s", known.as_dict())
        return known
    _warm(compiled, plain, args, rule.warm_seconds)
    result = _timed(compiled, plain, args, rule)
    if store is not None:
        store.save(result)
    return result


def _warm(compiled: Callable[..., Any], plain: Callable[..., Any], args: list[Any],
          seconds: float) -> None:
    """Call each side in turns until each has run for ``seconds``."""
    spent = [0.0, 0.0]
    while min(spent) < seconds:
        for side, fn in enumerate((compiled, plain)):
            start = time.perf_counter()
            fn(*args)
            spent[side] += time.perf_counter() - start


def _timed(
    compiled: Callable[..., Any],
    plain: Callable[..., Any],
    args: list[Any],
    rule: Rule,
) -> Measurement:
    """The interleaved rounds themselves: calibrate the calls per block on ``plain``, then time
    ``rounds`` rounds and extend an undecided result (see the module docstring)."""
    one_call = max(min(_block(plain, args, 1) for _ in range(3)), 1e-6)
    calls = int(min(50, max(1, rule.block_seconds / one_call)))
    compiled_times: list[float] = []
    plain_times: list[float] = []

    def run_rounds(count: int) -> Measurement:
        for _ in range(count):
            if len(compiled_times) % 2:
                plain_times.append(_block(plain, args, calls))
                compiled_times.append(_block(compiled, args, calls))
            else:
                compiled_times.append(_block(compiled, args, calls))
                plain_times.append(_block(plain, args, calls))
        return Measurement(tuple(compiled_times), tuple(plain_times), calls, rule.min_margin)

    result = run_rounds(rule.rounds)
    while result.undecided and len(compiled_times) < max(rule.rounds, rule.max_rounds):
        result = run_rounds(2)
    logger.debug("measure: %s", result.as_dict())
    return result
