"""Per-endpoint health: whether an endpoint is in outage (routing skips it), and the
rolling uptime, latency and throughput that `/models/{id}/endpoints` publishes.

Everything is counted in fixed-size rings, so memory stays bounded whatever the traffic,
and `record` (called once per answer) is O(1) and sorts nothing.

Precision. Answers are counted in time buckets on the monotonic clock. A window of
`n` buckets of width `w` is the current, partial bucket plus the `n` before it, so every
answer of the last `n·w` seconds counts and answers up to `w` seconds older may count too:
- uptime 5 min:  30 buckets of 10 s  → 5 min, up to 10 s more;
- uptime 30 min: 180 buckets of 10 s → 30 min, up to 10 s more;
- uptime 1 day:  144 buckets of 10 min → 1 day, up to 10 min more;
- outage window: 30 buckets of `outage_window_s / 30` → 30 s, up to 1 s more by default.
Latency and throughput samples carry their exact time: only those of the last 30 min
count, and only the newest `samples_max` are kept, so under heavy traffic the
percentiles describe the most recent `samples_max` answers of those 30 min.

Memory per endpoint: 2 × (31 + 181 + 145) counters of 4 bytes, plus 3 × `samples_max`
doubles once it has a sample (≈ 9 KB at the defaults); at most `endpoints_max` endpoints.

Outage. An endpoint enters outage when its outage window holds at least
`outage_failures` errors making at least `outage_ratio` of its counted answers. It
then stays in outage, however old those errors get, until a probe succeeds: routing
sends nothing to it except one probe per cool-down, so that a dead endpoint costs one
failed request per `cooldown_s` rather than one per request. Rate-limited answers say
the provider is busy, not broken: they count toward nothing.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from farebox.clock import Clock

OUTCOMES = frozenset({"ok", "error", "rate_limited"})

_FINE_WIDTH_S = 10.0
_FINE_BUCKETS_5M = 30
_FINE_BUCKETS_30M = 180
_DAY_WIDTH_S = 600.0
_DAY_BUCKETS = 144
_OUTAGE_BUCKETS = 30
_SAMPLE_AGE_MAX_S = 1800.0


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p75: float
    p90: float
    p99: float

    def wire(self) -> dict[str, float]:
        # One decimal: a tenth of a millisecond or of a token per second is below what
        # these measures can tell apart.
        return {"p50": round(self.p50, 1), "p75": round(self.p75, 1),
                "p90": round(self.p90, 1), "p99": round(self.p99, 1)}


@dataclass(frozen=True, slots=True)
class EndpointStats:
    uptime_5m: float | None      # percent 0..100, None when no counted answers in the window
    uptime_30m: float | None
    uptime_1d: float | None
    latency_30m: Percentiles | None     # time to first token, ms
    throughput_30m: Percentiles | None  # output tokens per second


class _Counts:
    """Successes and errors per time bucket, in a ring of fixed-width buckets.

    `_head` is the absolute index (time // width) of the newest bucket; the ring holds
    buckets `_head - size + 1 .. _head`, bucket `b` in slot `b % size`."""

    __slots__ = ("_err", "_head", "_ok", "_width")

    def __init__(self, width_s: float, size: int, now: float) -> None:
        assert width_s > 0 and size > 0
        self._width = width_s
        self._ok = array("I", [0]) * size
        self._err = array("I", [0]) * size
        self._head = self._bucket(now)

    def _bucket(self, now: float) -> int:
        return int(now // self._width)

    def add(self, now: float, ok: bool) -> None:
        bucket = self._bucket(now)
        assert bucket >= self._head, "the monotonic clock went backwards"
        size = len(self._ok)
        # Buckets skipped since the last answer are empty; their slots still hold counts
        # from one ring turn ago. At most `size` slots to clear, so O(1).
        for b in range(bucket - min(bucket - self._head, size) + 1, bucket + 1):
            self._ok[b % size] = 0
            self._err[b % size] = 0
        self._head = bucket
        if ok:
            self._ok[bucket % size] += 1
        else:
            self._err[bucket % size] += 1

    def totals(self, now: float, buckets: int) -> tuple[int, int]:
        """(successes, errors) in the current bucket and the `buckets` before it."""
        size = len(self._ok)
        assert buckets < size
        current = self._bucket(now)
        assert current >= self._head, "the monotonic clock went backwards"
        oldest = max(current - buckets, self._head - size + 1)
        ok = err = 0
        for b in range(oldest, self._head + 1):
            ok += self._ok[b % size]
            err += self._err[b % size]
        return ok, err

    def clear(self) -> None:
        for i in range(len(self._ok)):
            self._ok[i] = 0
            self._err[i] = 0


class _Samples:
    """The newest `size` (time, latency ms, throughput tok/s) samples; NaN where the
    answer did not measure one of them."""

    __slots__ = ("_at", "_filled", "_latency_ms", "_next", "_throughput")

    def __init__(self, size: int) -> None:
        self._at = array("d", [0.0]) * size
        self._latency_ms = array("d", [0.0]) * size
        self._throughput = array("d", [0.0]) * size
        self._next = 0
        self._filled = 0

    def add(self, now: float, latency_ms: float, throughput: float) -> None:
        i = self._next
        self._at[i] = now
        self._latency_ms[i] = latency_ms
        self._throughput[i] = throughput
        self._next = (i + 1) % len(self._at)
        self._filled = min(self._filled + 1, len(self._at))

    def since(self, oldest: float) -> tuple[list[float], list[float]]:
        """(latencies, throughputs) of the samples taken at `oldest` or later."""
        latencies: list[float] = []
        throughputs: list[float] = []
        for i in range(self._filled):
            if self._at[i] >= oldest:
                if not math.isnan(self._latency_ms[i]):
                    latencies.append(self._latency_ms[i])
                if not math.isnan(self._throughput[i]):
                    throughputs.append(self._throughput[i])
        return latencies, throughputs


def _percentiles(values: list[float]) -> Percentiles | None:
    """Nearest rank: the p-th percentile is the smallest value with at least p% of the
    values at or below it, i.e. sorted[ceil(p·n/100) − 1]; always an observed value."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: int) -> float:
        return ordered[max(1, -(-p * n // 100)) - 1]

    return Percentiles(p50=rank(50), p75=rank(75), p90=rank(90), p99=rank(99))


def _uptime(ok: int, err: int) -> float | None:
    return None if ok + err == 0 else 100.0 * ok / (ok + err)


class _Endpoint:
    __slots__ = ("day", "in_outage", "last_error_at", "minutes", "probe_at", "recent", "samples")

    def __init__(self, now: float, outage_width_s: float) -> None:
        self.recent = _Counts(outage_width_s, _OUTAGE_BUCKETS + 1, now)
        self.minutes = _Counts(_FINE_WIDTH_S, _FINE_BUCKETS_30M + 1, now)
        self.day = _Counts(_DAY_WIDTH_S, _DAY_BUCKETS + 1, now)
        self.samples: _Samples | None = None  # allocated on the first sample
        self.in_outage = False
        self.last_error_at: float | None = None
        self.probe_at: float | None = None  # when the outstanding probe was admitted


class Health:
    """Per-endpoint outage state and rolling statistics; one per gateway process."""

    def __init__(self, clock: Clock, *, outage_window_s: float = 30.0, outage_failures: int = 3,
                 outage_ratio: float = 0.5, cooldown_s: float = 30.0, samples_max: int = 256,
                 endpoints_max: int = 10_000) -> None:
        assert outage_window_s > 0 and outage_failures >= 1 and 0 < outage_ratio <= 1
        assert cooldown_s >= 0 and samples_max >= 1 and endpoints_max >= 1
        self._clock = clock
        self._outage_width_s = outage_window_s / _OUTAGE_BUCKETS
        self._outage_failures = outage_failures
        self._outage_ratio = outage_ratio
        self._cooldown_s = cooldown_s
        self._samples_max = samples_max
        self._endpoints_max = endpoints_max
        # Least recently recorded first, so eviction pops from the front.
        self._endpoints: OrderedDict[str, _Endpoint] = OrderedDict()

    def record(self, endpoint_id: str, outcome: str, *, ttft_s: float | None = None,
               tokens_per_s: float | None = None) -> None:
        """outcome: "ok", "error" or "rate_limited". Rate-limited answers count toward nothing
        but are remembered as seen. `ttft_s` and `tokens_per_s` are sampled from "ok" answers
        only: a fast failure would flatter the latency."""
        assert outcome in OUTCOMES, outcome
        assert ttft_s is None or ttft_s >= 0, ttft_s
        assert tokens_per_s is None or tokens_per_s >= 0, tokens_per_s
        now = self._clock.monotonic()
        endpoint = self._seen(endpoint_id, now)
        if outcome == "rate_limited":
            return
        ok = outcome == "ok"
        if ok and endpoint.in_outage and endpoint.probe_at is not None:
            # The probe answered: the outage is over, and the errors that caused it
            # belong to it, so they must not put the endpoint straight back in outage.
            endpoint.in_outage = False
            endpoint.probe_at = None
            endpoint.recent.clear()
        endpoint.recent.add(now, ok)
        endpoint.minutes.add(now, ok)
        endpoint.day.add(now, ok)
        if ok:
            if ttft_s is not None or tokens_per_s is not None:
                if endpoint.samples is None:
                    endpoint.samples = _Samples(self._samples_max)
                endpoint.samples.add(now, math.nan if ttft_s is None else ttft_s * 1000.0,
                                     math.nan if tokens_per_s is None else tokens_per_s)
            return
        endpoint.last_error_at = now
        if endpoint.in_outage:
            endpoint.probe_at = None  # the cool-down restarts from this error
        else:
            self._check_outage(endpoint, now)

    def state(self, endpoint_id: str) -> str:
        """"ok" (no failures in the outage window), "unstable" (some failures in the window,
        below the outage threshold), or "outage" (at least `outage_failures` errors AND an error
        ratio of at least `outage_ratio` among counted answers in the last `outage_window_s`
        seconds; the outage then lasts until a probe succeeds, see `admit`)."""
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return "ok"
        now = self._clock.monotonic()
        # The common case, read on every request: no error inside the window (plus one bucket
        # of precision) means no outage and nothing unstable, without summing the buckets.
        if not endpoint.in_outage and (endpoint.last_error_at is None or
                                       now - endpoint.last_error_at > self._outage_width_s * (_OUTAGE_BUCKETS + 1)):
            return "ok"
        if self._check_outage(endpoint, now):
            return "outage"
        _, err = endpoint.recent.totals(now, _OUTAGE_BUCKETS)
        return "unstable" if err else "ok"

    def admit(self, endpoint_id: str) -> bool:
        """May a request be sent to this endpoint now? True unless it is in outage. An endpoint
        in outage is probed again after a cool-down: once `cooldown_s` has passed since the
        outage's last error (or since the last probe was admitted), exactly one call returns
        True (the probe); the probe's outcome, recorded with `record`, either ends the outage
        (ok) or restarts the cool-down (error). Call it only for a request about to be sent:
        a True is a probe spent."""
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return True
        now = self._clock.monotonic()
        if not self._check_outage(endpoint, now):
            return True
        assert endpoint.last_error_at is not None
        since = endpoint.last_error_at if endpoint.probe_at is None else max(endpoint.last_error_at,
                                                                              endpoint.probe_at)
        if now - since >= self._cooldown_s:
            endpoint.probe_at = now
            return True
        return False

    def stats(self, endpoint_id: str) -> EndpointStats:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return EndpointStats(None, None, None, None, None)
        now = self._clock.monotonic()
        latencies, throughputs = ([], []) if endpoint.samples is None else \
            endpoint.samples.since(now - _SAMPLE_AGE_MAX_S)
        return EndpointStats(
            uptime_5m=_uptime(*endpoint.minutes.totals(now, _FINE_BUCKETS_5M)),
            uptime_30m=_uptime(*endpoint.minutes.totals(now, _FINE_BUCKETS_30M)),
            uptime_1d=_uptime(*endpoint.day.totals(now, _DAY_BUCKETS)),
            latency_30m=_percentiles(latencies),
            throughput_30m=_percentiles(throughputs),
        )

    def _seen(self, endpoint_id: str, now: float) -> _Endpoint:
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is not None:
            self._endpoints.move_to_end(endpoint_id)
            return endpoint
        if len(self._endpoints) >= self._endpoints_max:
            self._endpoints.popitem(last=False)
        endpoint = self._endpoints[endpoint_id] = _Endpoint(now, self._outage_width_s)
        return endpoint

    def _check_outage(self, endpoint: _Endpoint, now: float) -> bool:
        """Is the endpoint in outage? Enters it when the window meets the threshold. Checked
        on reads too, not only on errors: successes leaving the window can raise the ratio."""
        if endpoint.in_outage:
            return True
        ok, err = endpoint.recent.totals(now, _OUTAGE_BUCKETS)
        if err >= self._outage_failures and err >= self._outage_ratio * (ok + err):
            endpoint.in_outage = True
            endpoint.probe_at = None
            return True
        return False
