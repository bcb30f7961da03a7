"""Low-balance alerts (pure): crossings and re-arming, the spend window, the run-out
projection, the message and the webhook payload."""

from __future__ import annotations

from datetime import date

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.billing.alerts import DAY_MS, Alert, Alerts, SpendWindow, Threshold, dollars, iso_utc, utc_date

USD = 10**9
JAN1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
HOUR = 3_600_000
WARNING = Threshold("warning", 20 * USD, emails=("ops@acme.test",), webhooks=("https://acme.test/hook",))
URGENT = Threshold("urgent", 5 * USD, emails=("cfo@acme.test",))


def alerts_with(*thresholds: Threshold) -> Alerts:
    return Alerts(lambda org_id: thresholds)


def fired(alerts: Alerts, before: float, after: float, org_id: int = 1, spend: SpendWindow | None = None,
          at_ms: int = JAN1) -> list[str]:
    result = alerts.observe(org_id, "Acme", round(before * USD), round(after * USD), at_ms=at_ms,
                            spend=spend or SpendWindow())
    return [a.threshold.name for a in result]


# -- crossings ---------------------------------------------------------------------------------------------------

def test_a_downward_crossing_fires_once_and_further_falls_below_do_not_refire():
    alerts = alerts_with(WARNING, URGENT)
    assert fired(alerts, 25, 21) == []
    assert fired(alerts, 21, 19) == ["warning"]
    assert fired(alerts, 19, 15) == []
    assert fired(alerts, 15, 6) == []
    assert fired(alerts, 6, 4.5) == ["urgent"]
    assert fired(alerts, 4.5, 0) == []


def test_exactly_at_the_threshold_is_not_below_it():
    alerts = alerts_with(WARNING)
    assert fired(alerts, 21, 20) == []
    assert alerts.observe(1, "Acme", 20 * USD, 20 * USD - 1, at_ms=JAN1, spend=SpendWindow())[0].threshold == WARNING


def test_one_big_charge_crossing_several_thresholds_fires_them_together_most_urgent_first():
    alerts = alerts_with(WARNING, URGENT)   # configured least urgent first on purpose
    assert fired(alerts, 30, 1) == ["urgent", "warning"]
    assert fired(alerts, 1, 0) == []


def test_rising_above_rearms_and_the_next_crossing_fires_again():
    alerts = alerts_with(WARNING)
    assert fired(alerts, 21, 19) == ["warning"]
    assert fired(alerts, 19, 20) == []      # back AT the threshold: re-armed, no alert going up
    assert fired(alerts, 20, 19) == ["warning"]
    assert fired(alerts, 19, 50) == []
    assert fired(alerts, 50, 10) == ["warning"]


def test_a_balance_going_up_never_fires():
    alerts = alerts_with(WARNING, URGENT)
    for before, after in [(0, 4), (4, 6), (6, 19), (19, 25), (0, 100), (25, 25)]:
        assert fired(alerts, before, after) == []


def test_a_duplicated_or_racing_observation_does_not_fire_twice():
    # Two charges that both read the balance before either was applied report the same `before`.
    alerts = alerts_with(WARNING)
    assert fired(alerts, 21, 19.5) == ["warning"]
    assert fired(alerts, 21, 19) == []
    assert fired(alerts, 21, 19) == []


def test_organizations_are_independent():
    alerts = alerts_with(WARNING)
    assert fired(alerts, 21, 19, org_id=1) == ["warning"]
    assert fired(alerts, 21, 19, org_id=2) == ["warning"]
    assert fired(alerts, 19, 21, org_id=1) == []
    assert fired(alerts, 21, 19, org_id=1) == ["warning"]
    assert fired(alerts, 21, 19, org_id=2) == []


def test_a_threshold_added_above_the_balance_fires_only_after_a_real_crossing():
    configured: dict[int, tuple[Threshold, ...]] = {1: ()}
    alerts = Alerts(lambda org_id: configured[org_id])
    assert fired(alerts, 12, 10) == []
    configured[1] = (WARNING,)              # the balance is already below it: this is not a crossing
    assert fired(alerts, 10, 9) == []
    assert fired(alerts, 9, 25) == []
    assert fired(alerts, 25, 15) == ["warning"]


def test_a_threshold_moved_under_the_same_name_is_judged_at_its_new_level():
    configured = {1: (WARNING,)}
    alerts = Alerts(lambda org_id: configured[org_id])
    assert fired(alerts, 21, 19) == ["warning"]
    configured[1] = (Threshold("warning", 10 * USD),)
    assert fired(alerts, 19, 9) == ["warning"]   # crossed the new level; the old level's disarming does not count
    configured[1] = ()
    assert fired(alerts, 9, 0) == []
    assert alerts.snapshot() == {}                # removed thresholds leave no state behind


def test_an_alert_carries_the_balance_after_the_change_and_the_spend_projection():
    spend = SpendWindow()
    for day in range(7):
        spend.add(3 * USD, JAN1 + day * DAY_MS)
    at = JAN1 + 6 * DAY_MS + 12 * HOUR            # 2026-01-07 12:00
    [alert] = alerts_with(WARNING).observe(7, "Acme", 21 * USD, 18 * USD, at_ms=at, spend=spend)
    assert alert == Alert(7, "Acme", WARNING, 18 * USD, 3 * USD, date(2026, 1, 13), at)


def test_snapshot_restore_round_trip():
    alerts = alerts_with(WARNING, URGENT)
    assert fired(alerts, 21, 10, org_id=1) == ["warning"]
    assert fired(alerts, 6, 2, org_id=2) == ["urgent"]
    snap = alerts.snapshot()
    assert snap == {1: {"warning": 20 * USD}, 2: {"warning": 20 * USD, "urgent": 5 * USD}}
    snap[1]["urgent"] = 1                        # a copy: editing it changes nothing
    assert alerts.snapshot()[1] == {"warning": 20 * USD}

    restarted = alerts_with(WARNING, URGENT)
    restarted.restore(alerts.snapshot())
    assert restarted.snapshot() == alerts.snapshot()
    assert fired(restarted, 21, 10, org_id=1) == []   # the replayed change does not alert twice
    assert fired(restarted, 10, 30, org_id=1) == []
    assert fired(restarted, 30, 10, org_id=1) == ["warning"]
    assert fired(alerts_with(WARNING, URGENT), 21, 10, org_id=1) == ["warning"]  # without restore it would


@settings(max_examples=300, deadline=None)
@given(start=st.integers(-3, 30),
       walk=st.lists(st.tuples(st.integers(-3, 30), st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_each_threshold_fires_exactly_once_per_downward_crossing(start: int, walk: list[tuple[int, bool, bool]]):
    """Balances in nano-dollars around thresholds at 5, 20 and 21; some changes are observed
    twice (a retried notification) and the state is sometimes carried through snapshot/restore."""
    thresholds = (Threshold("low", 5), Threshold("mid", 20), Threshold("high", 21))
    alerts = Alerts(lambda org_id: thresholds)
    counts = {t.name: 0 for t in thresholds}
    expected = dict(counts)
    balance = start
    for after, duplicated, restart in walk:
        for t in thresholds:
            expected[t.name] += balance >= t.below_nanos > after
        for _ in range(1 + duplicated):
            names = [a.threshold.name for a in alerts.observe(1, "o", balance, after, at_ms=JAN1, spend=SpendWindow())]
            levels = [t.below_nanos for t in thresholds if t.name in names]
            assert names == [t.name for t in thresholds if t.name in names] and levels == sorted(levels)
            for name in names:
                counts[name] += 1
        if restart:
            snapshot = alerts.snapshot()
            alerts = Alerts(lambda org_id: thresholds)
            alerts.restore(snapshot)
        balance = after
    assert counts == expected


# -- spend window ----------------------------------------------------------------------------------------------

def test_no_spend_means_no_average_and_no_projection():
    spend = SpendWindow()
    assert spend.average_daily(JAN1) == 0
    assert spend.runs_out_on(10 * USD, JAN1) is None
    spend.add(0, JAN1)
    assert spend.runs_out_on(10 * USD, JAN1) is None


def test_days_roll_over_at_utc_midnight():
    spend = SpendWindow(days=1)
    spend.add(5 * USD, JAN1 - 1)                 # 2025-12-31T23:59:59.999Z
    assert spend.average_daily(JAN1 - 1) == 5 * USD
    spend.add(2 * USD, JAN1)
    assert spend.average_daily(JAN1) == 2 * USD
    assert spend.average_daily(JAN1 + DAY_MS - 1) == 2 * USD
    assert spend.average_daily(JAN1 + DAY_MS) == 0


def test_the_average_covers_the_last_n_days_including_today():
    spend = SpendWindow()                       # 7 days
    for day in range(30):
        spend.add((day + 1) * USD, JAN1 + day * DAY_MS + 5 * HOUR)
    today = JAN1 + 29 * DAY_MS + 6 * HOUR
    assert spend.average_daily(today) == sum(range(24, 31)) * USD // 7
    # A week later nothing in the ring is recent any more.
    assert spend.average_daily(today + 7 * DAY_MS) == 0
    assert spend.average_daily(today + 6 * DAY_MS) == 30 * USD // 7


def test_the_ring_keeps_only_n_days_and_ignores_charges_older_than_the_window():
    spend = SpendWindow(days=3)
    spend.add(1 * USD, JAN1)
    spend.add(1 * USD, JAN1 + 1 * DAY_MS)
    spend.add(1 * USD, JAN1 + 2 * DAY_MS)
    spend.add(9 * USD, JAN1 + 3 * DAY_MS)        # reuses the oldest day's slot
    assert spend.average_daily(JAN1 + 3 * DAY_MS) == 11 * USD // 3
    spend.add(100 * USD, JAN1)                   # late and older than the window: must not clobber day 3
    assert spend.average_daily(JAN1 + 3 * DAY_MS) == 11 * USD // 3


def test_the_average_floors_to_a_nano_dollar():
    spend = SpendWindow()
    for day in range(7):
        spend.add(1, JAN1 + day * DAY_MS)
    spend.add(3, JAN1)
    assert spend.average_daily(JAN1 + 6 * DAY_MS) == 10 // 7 == 1


def test_a_young_organization_is_averaged_over_the_days_it_has_existed():
    spend = SpendWindow()
    spend.add(10 * USD, JAN1 + 1 * HOUR)
    assert spend.average_daily(JAN1 + 2 * HOUR) == 10 * USD
    spend.add(10 * USD, JAN1 + DAY_MS + 1 * HOUR)
    assert spend.average_daily(JAN1 + DAY_MS + 2 * HOUR) == 10 * USD
    assert spend.average_daily(JAN1 + 10 * DAY_MS) == 0


# -- run-out date ---------------------------------------------------------------------------------------------

def window_spending(per_day: int) -> SpendWindow:
    spend = SpendWindow()
    for day in range(-6, 1):
        spend.add(per_day, JAN1 + day * DAY_MS)
    return spend


def test_run_out_is_the_utc_date_of_the_instant_the_balance_reaches_zero():
    spend = window_spending(3 * USD)
    assert spend.runs_out_on(10 * USD, JAN1) == date(2026, 1, 4)              # 3⅓ days: Jan 4 08:00
    assert spend.runs_out_on(10 * USD, JAN1 + 23 * HOUR) == date(2026, 1, 5)  # Jan 5 07:00
    assert spend.runs_out_on(9 * USD, JAN1) == date(2026, 1, 4)               # exactly 3 days: Jan 4 00:00
    assert spend.runs_out_on(9 * USD - 100, JAN1) == date(2026, 1, 3)         # 100 nano-dollars less: ~3 ms earlier
    assert spend.runs_out_on(1, JAN1) == date(2026, 1, 1)                     # ceil: still today, never before now


def test_an_empty_or_negative_balance_runs_out_today():
    spend = window_spending(USD)
    assert spend.runs_out_on(0, JAN1 + 5 * HOUR) == date(2026, 1, 1)
    assert spend.runs_out_on(-5 * USD, JAN1 + 5 * HOUR) == date(2026, 1, 1)


def test_a_run_out_beyond_the_calendar_is_the_last_date():
    assert window_spending(1).runs_out_on(2**63 - 1, JAN1) == date.max


def test_time_helpers_use_integer_milliseconds():
    assert utc_date(JAN1 - 1) == date(2025, 12, 31)
    assert utc_date(JAN1) == date(2026, 1, 1)
    assert iso_utc(JAN1 + 1234) == "2026-01-01T00:00:01.234Z"


# -- message and payload --------------------------------------------------------------------------------------

def test_dollars_are_exact_with_at_least_cents():
    assert dollars(20 * USD) == "$20.00"
    assert dollars(19_500_000_000) == "$19.50"
    assert dollars(12_345) == "$0.000012345"
    assert dollars(-1_250_000_000) == "-$1.25"
    assert dollars(0) == "$0.00"


def alert(runs_out_on: date | None = date(2026, 1, 9), org_name: str = "Acme Corp") -> Alert:
    return Alert(42, org_name, URGENT, 4_999_999_999, 641_428_571, runs_out_on, JAN1 + 90_000)


def test_the_text_says_who_what_how_much_until_when_and_what_to_do():
    text = alert().text()
    for part in ("Acme Corp", "urgent", "$5.00", "$4.999999999", "$0.641428571", "2026-01-09", "Add credits",
                 "auto top-up"):
        assert part in text, part
    assert "no recent spend" not in text
    assert "no recent spend" in alert(runs_out_on=None).text()
    assert alert().subject() == "Farebox urgent: Acme Corp balance is $4.999999999, below $5.00"


def test_an_organization_name_cannot_break_the_subject_or_forge_lines():
    forged = alert(org_name="Acme\nBalance: $1000")
    assert "\n" not in forged.subject()
    assert "\nBalance: $1000" not in forged.text()


def test_the_payload_carries_exact_decimal_strings_and_a_stable_id():
    payload = alert().payload()
    assert payload == {
        "id": alert().id,
        "type": "balance.low",
        "created_at": "2026-01-01T00:01:30.000Z",
        "org": {"id": 42, "name": "Acme Corp"},
        "threshold": {"name": "urgent", "below": "5"},
        "balance": "4.999999999",
        "avg_daily_spend": "0.641428571",
        "runs_out_on": "2026-01-09",
    }
    assert b'"balance":"4.999999999"' in orjson.dumps(payload)
    assert alert(runs_out_on=None).payload()["runs_out_on"] is None
    assert alert().id.startswith("evt_") and alert().id == alert().id
    later = Alert(42, "Acme Corp", URGENT, 4_999_999_999, 641_428_571, None, JAN1 + 90_001)
    assert later.id != alert().id


def test_a_charge_undone_is_taken_back_from_the_day_it_was_counted_in():
    window = SpendWindow(7)
    now = 20_000 * DAY_MS + 1000
    window.add(300, now)
    window.add(200, now)
    window.remove(200, now)
    assert window.average_daily(now) == 300
    window.remove(10_000, now)   # never below zero
    assert window.average_daily(now) == 0
    window.remove(5, now - 8 * DAY_MS)   # a day out of the window: nothing to take back
    assert window.average_daily(now) == 0
