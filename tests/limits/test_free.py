"""FreeTier: OpenRouter's free-model limits (20 a minute; 50 a day, or 1,000 a day after $10 of
purchases) and its 429s, rendered through the one error renderer, byte for byte."""

from __future__ import annotations

import orjson
import pytest

from farebox.api.errors import error_body, error_headers
from farebox.clock import FakeClock
from farebox.errors import ConfigError, FareboxError, RateLimited
from farebox.limits import Decision, FreeTier, MemoryLimiter
from farebox.money import parse_usd
from farebox.settings import load_settings

MIDNIGHT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, where FakeClock starts
MINUTE_MS = 60_000
DAY_MS = 86_400_000
TEN_USD = parse_usd("10")
ORG = 7


def tier(limiter: MemoryLimiter | None = None, **options: int) -> FreeTier:
    options.setdefault("purchased_threshold_nanos", TEN_USD)
    return FreeTier(limiter or MemoryLimiter(), **options)


def refusal(free: FreeTier, purchased: int, now_ms: int, org: int = ORG) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        free.check(org, purchased, now_ms)
    return caught.value


def rendered(error: FareboxError) -> tuple[bytes, dict[str, str]]:
    return error_body(error), {k.decode(): v.decode() for k, v in error_headers(error)}


def use(free: FreeTier, count: int, purchased: int, clock: FakeClock, per_minute: int = 20) -> None:
    """Make `count` allowed requests, each batch of `per_minute` in a minute of its own
    (starting with the next one, so earlier requests in the current minute do not matter)."""
    for i in range(count):
        if i % per_minute == 0:
            clock.advance(60)
        free.check(ORG, purchased, clock.now_ms())


def test_twenty_a_minute_then_openrouters_exact_429() -> None:
    clock = FakeClock()
    free = tier()
    clock.advance(30)  # 00:00:30
    for _ in range(20):
        free.check(ORG, 0, clock.now_ms())
    error = refusal(free, 0, clock.now_ms())
    assert error.status == 429
    body, headers = rendered(error)
    assert body == (
        b'{"error":{"code":429,"message":"Rate limit exceeded: free-models-per-min. ",'
        b'"metadata":{"headers":{"X-RateLimit-Limit":"20","X-RateLimit-Remaining":"0",'
        b'"X-RateLimit-Reset":"1767225660000"},"limit_source":"openrouter_free_tier_minute",'
        b'"provider_name":null,"error_type":"rate_limit_exceeded"}}}'
    )
    assert headers == {
        "x-ratelimit-limit": "20",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(MIDNIGHT_MS + MINUTE_MS),
        "retry-after": "30",
    }
    clock.advance(30)  # the next minute: allowed again
    assert free.check(ORG, 0, clock.now_ms())["X-RateLimit-Reset"] == str(MIDNIGHT_MS + 2 * MINUTE_MS)


@pytest.mark.parametrize(("offset_ms", "retry_after"), [
    (500, "60"),        # 59.5 s left rounds up
    (30_000, "30"),     # whole seconds stay as they are
    (58_500, "2"),      # 1.5 s
    (59_999, "1"),      # 1 ms left is still a whole second, never 0
])
def test_retry_after_is_whole_seconds_rounded_up(offset_ms: int, retry_after: str) -> None:
    free = tier(per_minute=1)
    now = MIDNIGHT_MS + offset_ms
    free.check(ORG, 0, now)
    _, headers = rendered(refusal(free, 0, now))
    assert headers["retry-after"] == retry_after
    assert headers["x-ratelimit-reset"] == str(MIDNIGHT_MS + MINUTE_MS)


def test_fifty_a_day_then_the_add_credits_message_and_midnight_reset() -> None:
    clock = FakeClock()
    clock.advance(13 * 3600)  # 13:00 UTC
    free = tier()
    use(free, 50, 0, clock)
    clock.advance(60)  # a fresh minute, so only the day can refuse
    error = refusal(free, 0, clock.now_ms())
    body, headers = rendered(error)
    tomorrow = MIDNIGHT_MS + DAY_MS
    assert orjson.loads(body) == {"error": {
        "code": 429,
        "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day",
        "metadata": {
            "headers": {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(tomorrow)},
            "limit_source": "openrouter_free_tier_daily",
            "provider_name": None,
            "error_type": "rate_limit_exceeded",
        },
    }}
    seconds_left = (tomorrow - clock.now_ms()) // 1000
    assert headers == {"x-ratelimit-limit": "50", "x-ratelimit-remaining": "0",
                       "x-ratelimit-reset": str(tomorrow), "retry-after": str(seconds_left)}
    # Half a second before midnight: still refused; at midnight the day starts over.
    assert refusal(free, 0, tomorrow - 500).headers["Retry-After"] == "1"
    clock.advance((tomorrow - clock.now_ms()) / 1000)
    assert clock.now_ms() == tomorrow
    assert free.check(ORG, 0, clock.now_ms())["X-RateLimit-Remaining"] == "19"


def test_the_purchase_threshold_switches_fifty_to_a_thousand() -> None:
    clock = FakeClock()
    free = tier()
    use(free, 50, TEN_USD - 1, clock)
    clock.advance(60)
    assert refusal(free, TEN_USD - 1, clock.now_ms()).metadata["headers"]["X-RateLimit-Limit"] == "50"
    # Buying the threshold, to the nano-dollar, lifts the day to 1000; the 50 already used count.
    headers = free.check(ORG, TEN_USD, clock.now_ms())
    assert headers == {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "19",
                       "X-RateLimit-Reset": str(clock.now_ms() + MINUTE_MS)}
    use(free, 1000 - 51, TEN_USD, clock)
    clock.advance(60)
    error = refusal(free, TEN_USD, clock.now_ms())
    body = orjson.loads(error_body(error))
    assert body["error"]["message"] == "Rate limit exceeded: free-models-per-day-high-balance. "
    assert body["error"]["metadata"] == {
        "headers": {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(MIDNIGHT_MS + DAY_MS)},
        "limit_source": "openrouter_free_tier_daily",
        "provider_name": None,
        "error_type": "rate_limit_exceeded",
    }


def test_requests_refused_by_the_minute_do_not_use_up_the_day() -> None:
    clock = FakeClock()
    free = tier()
    for _ in range(20):
        free.check(ORG, 0, clock.now_ms())
    for _ in range(30):  # refused by the minute
        assert refusal(free, 0, clock.now_ms()).metadata["limit_source"] == "openrouter_free_tier_minute"
    clock.advance(60)
    use(free, 30, 0, clock)  # the day still has exactly 30 left
    clock.advance(60)
    assert refusal(free, 0, clock.now_ms()).metadata["limit_source"] == "openrouter_free_tier_daily"


def test_requests_refused_by_the_day_do_not_use_up_the_minute() -> None:
    clock = FakeClock()
    free = tier()
    use(free, 50, 0, clock)
    clock.advance(60)
    for _ in range(25):  # refused by the day, all in this minute
        assert refusal(free, 0, clock.now_ms()).metadata["limit_source"] == "openrouter_free_tier_daily"
    # Once the organization buys credit, this same minute still has all 20 requests.
    for _ in range(20):
        free.check(ORG, TEN_USD, clock.now_ms())
    assert refusal(free, TEN_USD, clock.now_ms()).metadata["limit_source"] == "openrouter_free_tier_minute"


def test_when_both_windows_are_spent_the_day_is_reported() -> None:
    clock = FakeClock()
    free = tier(per_day=20)
    use(free, 20, 0, clock)  # 20 in one minute: both exhausted
    error = refusal(free, 0, clock.now_ms())
    assert error.metadata["limit_source"] == "openrouter_free_tier_daily"
    assert error.headers["X-RateLimit-Reset"] == str(MIDNIGHT_MS + DAY_MS)


def test_success_headers_name_the_binding_window() -> None:
    clock = FakeClock()
    free = tier()
    assert free.check(ORG, 0, clock.now_ms()) == {  # 19 left this minute, 49 today
        "X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "19", "X-RateLimit-Reset": str(MIDNIGHT_MS + MINUTE_MS)}
    use(free, 44, 0, clock)  # 45 used today
    clock.advance(60)
    assert free.check(ORG, 0, clock.now_ms()) == {  # 19 left this minute, 4 today
        "X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": str(MIDNIGHT_MS + DAY_MS)}


def test_organizations_are_counted_apart() -> None:
    free = tier(per_minute=1)
    free.check(1, 0, MIDNIGHT_MS)
    free.check(2, 0, MIDNIGHT_MS)
    refusal(free, 0, MIDNIGHT_MS, org=1)
    refusal(free, 0, MIDNIGHT_MS, org=2)


def test_settings_drive_the_limits_and_the_message() -> None:
    settings = load_settings(env={"FAREBOX_FREE_REQUESTS_PER_MINUTE": "3", "FAREBOX_FREE_REQUESTS_PER_DAY": "4",
                                  "FAREBOX_FREE_REQUESTS_PER_DAY_PURCHASED": "6",
                                  "FAREBOX_FREE_PURCHASE_THRESHOLD_USD": "12.5"})
    free = FreeTier.from_settings(MemoryLimiter(), settings)
    clock = FakeClock()
    use(free, 4, 0, clock, per_minute=3)
    error = refusal(free, 0, clock.now_ms())
    assert error.message == ("Rate limit exceeded: free-models-per-day. "
                             "Add 12.5 credits to unlock 6 free model requests per day")
    assert error.metadata["headers"]["X-RateLimit-Limit"] == "4"
    assert free.check(ORG, parse_usd("12.5"), clock.now_ms())["X-RateLimit-Remaining"] == "1"


@pytest.mark.parametrize("bad", ["ten", "-1", "0.0000000001"])
def test_a_bad_threshold_setting_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^free_purchase_threshold_usd: "):
        load_settings(env={"FAREBOX_FREE_PURCHASE_THRESHOLD_USD": bad})


def test_defaults_match_openrouter() -> None:
    free = FreeTier.from_settings(MemoryLimiter(), load_settings(env={}))
    assert (free.per_minute, free.per_day, free.per_day_purchased, free.purchased_threshold_nanos) == (
        20, 50, 1000, TEN_USD)


def test_user_id_is_rendered_at_the_top_level_only_when_set() -> None:
    free = tier(per_minute=1)
    free.check(ORG, 0, MIDNIGHT_MS)
    with pytest.raises(RateLimited) as caught:
        free.check(ORG, 0, MIDNIGHT_MS, user_id="user_7")
    body = orjson.loads(error_body(caught.value))
    assert body["user_id"] == "user_7"
    assert set(body) == {"error", "user_id"}
    assert set(orjson.loads(error_body(refusal(free, 0, MIDNIGHT_MS)))) == {"error"}


class RacingLimiter(MemoryLimiter):
    """A limiter shared with another gateway process: just before our first day hit, the other
    process spends what is left of the organization's day (between our peek and our hit)."""

    def __init__(self) -> None:
        super().__init__()
        self.raced = False

    def hit(self, key: str, limit: int, window: str, now_ms: int, cost: int = 1) -> Decision:
        if window == "day" and not self.raced:
            self.raced = True
            while super().hit(key, limit, window, now_ms).allowed:
                pass
        return super().hit(key, limit, window, now_ms, cost)


def test_losing_a_race_on_the_day_gives_the_minute_back() -> None:
    limiter = RacingLimiter()
    free = tier(limiter)
    error = refusal(free, 0, MIDNIGHT_MS)
    assert limiter.raced
    assert error.metadata["limit_source"] == "openrouter_free_tier_daily"
    # Our refused request left no trace in the minute.
    assert limiter.peek(f"free:{ORG}", 20, "minute", MIDNIGHT_MS).remaining == 20
