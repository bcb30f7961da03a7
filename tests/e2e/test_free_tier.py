"""The free tier and per-key rate limits over HTTP, on an in-process gateway whose clock the
test moves: `:free` models allow so many requests a minute and a day (more once the
organization has bought enough credit), refusals are OpenRouter's exact 429s, and free
requests cost nothing, even with an empty balance."""

from __future__ import annotations

import re
from decimal import Decimal

from tests.e2e.procs import http

FREE = {"model": "sim/small:free", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
DAY = 86_400.0


def ask(gw, key, body=FREE):  # type: ignore[no-untyped-def]
    status, data, headers = http("POST", f"{gw.api}/chat/completions", body, key)
    return status, data, {k.lower(): v for k, v in headers.items()}   # HTTP header names have no case


def test_free_models_per_minute_and_per_day_with_exact_429s(make_fake_clock_gateway, org_name):
    gw = make_fake_clock_gateway(free_requests_per_minute=3, free_requests_per_day=5,
                                 free_requests_per_day_purchased=7, free_purchase_threshold_usd="10")
    gw.org(org_name)                   # no credit at all: free models still answer
    key, _ = gw.key(org_name)
    gw.advance(30)                     # 00:00:30: the minute ends 30 s from now
    for _ in range(3):
        status, data, _ = ask(gw, key)
        assert status == 200, data
        assert data["usage"]["cost"] == 0
    status, data, headers = ask(gw, key)
    assert status == 429, data
    minute_end = int((gw.clock.now() // 60 + 1) * 60 * 1000)
    assert data == {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-min. ",
                              "metadata": {"headers": {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0",
                                                       "X-RateLimit-Reset": str(minute_end)},
                                           "limit_source": "openrouter_free_tier_minute", "provider_name": None,
                                           "error_type": "rate_limit_exceeded"}}}
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"],
            headers["retry-after"]) == ("3", "0", str(minute_end), "30")

    gw.advance(60)                     # the next minute: two more, then the day is used up
    assert [ask(gw, key)[0] for _ in range(2)] == [200, 200]
    status, data, headers = ask(gw, key)
    assert status == 429
    midnight = int(DAY * 1000 * (gw.clock.now() // DAY + 1))
    assert data["error"]["message"] == ("Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 7 free "
                                        "model requests per day")
    assert data["error"]["metadata"]["limit_source"] == "openrouter_free_tier_daily"
    assert data["error"]["metadata"]["headers"] == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                                                    "X-RateLimit-Reset": str(midnight)}
    assert int(headers["retry-after"]) == -(-(midnight - gw.clock.now_ms()) // 1000)

    # Buying $10 (all-time, not the balance) lifts the day to 7: two more today.
    gw.admin("POST", f"/organizations/{org_name}/purchases", {"amount": "10", "method": "bank", "reference": "b1"})
    gw.advance(60)
    assert [ask(gw, key)[0] for _ in range(2)] == [200, 200]
    status, data, _ = ask(gw, key)
    assert status == 429 and data["error"]["message"] == "Rate limit exceeded: free-models-per-day-high-balance. "
    _, key_data, _ = http("GET", f"{gw.api}/key", key=key)
    assert key_data["data"]["is_free_tier"] is False

    gw.advance_to(midnight / 1000)     # a new UTC day
    assert ask(gw, key)[0] == 200


def test_paid_models_are_not_counted_by_the_free_tier(make_fake_clock_gateway, org_name):
    gw = make_fake_clock_gateway(free_requests_per_minute=1, free_requests_per_day=1)
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    paid = {**FREE, "model": "sim/small"}
    assert [ask(gw, key, paid)[0] for _ in range(3)] == [200, 200, 200]
    assert ask(gw, key)[0] == 200
    assert ask(gw, key)[0] == 429
    assert ask(gw, key, paid)[0] == 200


def test_a_key_rate_limit_counts_requests_and_tokens_per_minute(make_fake_clock_gateway, org_name):
    gw = make_fake_clock_gateway()
    gw.org(org_name, "1.00")
    paid = {**FREE, "model": "sim/small"}
    key, khash = gw.key(org_name, rate_limit_rpm=2)
    assert [ask(gw, key, paid)[0] for _ in range(2)] == [200, 200]
    status, data, headers = ask(gw, key, paid)
    assert status == 429, data
    assert data["error"]["message"] == "Rate limit exceeded: key requests per minute (2)"
    assert data["error"]["metadata"]["limit_source"] == "key" and "retry-after" in headers
    gw.advance(60)
    assert ask(gw, key, paid)[0] == 200

    # Tokens: the first request uses 34 (8 prompt + 26 completion); a limit of 30 refuses the next.
    tokens, _ = gw.key(org_name, name="tokens", rate_limit_tpm=30)
    status, data, _ = ask(gw, tokens, paid)
    assert status == 200 and data["usage"]["total_tokens"] > 30
    status, data, _ = ask(gw, tokens, paid)
    assert status == 429 and re.match(r"Rate limit exceeded: key tokens per minute \(30\)", data["error"]["message"])
    gw.advance(60)
    assert ask(gw, tokens, paid)[0] == 200
    status, data, _ = http("PATCH", f"{gw.api}/keys/{khash}", {"organization": org_name, "rate_limit_rpm": None},
                           gw.management_key)
    assert status == 200 and data["data"]["rate_limit_rpm"] is None
    assert Decimal(str(gw.balance(org_name))) < Decimal("1.00")
