"""Budgets: calendar periods in UTC, reservations under concurrency, settlement, restart rebuild."""

import asyncio
import random
import threading
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from engine.budget import BudgetBook, BudgetExceeded, BudgetSpec, period_bounds
from engine.usage import UsageStore


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


NOW = utc(2026, 3, 15, 13, 45)  # a Sunday
MONTHLY = BudgetSpec("monthly", 1_000_000)  # $1.00


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("daily", NOW, utc(2026, 3, 15), utc(2026, 3, 16)),
        ("weekly", NOW, utc(2026, 3, 9), utc(2026, 3, 16)),  # weeks start on Monday
        ("weekly", utc(2026, 3, 16), utc(2026, 3, 16), utc(2026, 3, 23)),
        ("monthly", NOW, utc(2026, 3, 1), utc(2026, 4, 1)),
        ("monthly", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("monthly", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
        # 01:00 at +05:00 is still February in UTC
        ("monthly", datetime(2026, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=5))), utc(2026, 2, 1), utc(2026, 3, 1)),
        ("daily", datetime(2026, 3, 15, 23, 0), utc(2026, 3, 15), utc(2026, 3, 16)),  # naive = UTC
        ("daily", NOW.timestamp(), utc(2026, 3, 15), utc(2026, 3, 16)),
    ],
)
def test_period_bounds_on_utc_calendar(period, now, start, end):
    assert period_bounds(period, now) == (start, end)


def test_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="period must be one of daily, weekly, monthly"):
        BudgetSpec("yearly", 1)
    with pytest.raises(ValueError, match="limit"):
        BudgetSpec("daily", -1)
    with pytest.raises(ValueError, match="warn_at"):
        BudgetSpec("daily", 1, warn_at=1.5)
    with pytest.raises(ValueError, match="unknown budget field"):
        BudgetSpec.from_config({"period": "daily", "limit_usd": 1, "limt": 2})
    with pytest.raises(ValueError, match="needs both"):
        BudgetSpec.from_config({"period": "daily"})
    assert BudgetSpec.from_config({"period": "weekly", "limit_usd": 12.5, "warn_at": 0.5}) == BudgetSpec("weekly", 12_500_000, 0.5)


def test_reserve_then_settle_replaces_the_hold_with_the_real_cost():
    book = BudgetBook()
    r = book.reserve("team-a", MONTHLY, 300_000, now=NOW)
    assert book.status("team-a", MONTHLY, now=NOW)["reserved_micro_usd"] == 300_000
    book.settle(r, 120_000, now=NOW)
    book.settle(r, 120_000, now=NOW)  # idempotent
    st = book.status("team-a", MONTHLY, now=NOW)
    assert (st["spent_micro_usd"], st["reserved_micro_usd"]) == (120_000, 0)
    assert st["spent"] == 0.12 and st["remaining"] == 0.88 and st["resets_at"] == "2026-04-01T00:00:00Z"


def test_null_cost_settles_at_zero_and_release_frees_the_hold():
    book = BudgetBook()
    book.settle(book.reserve("k", MONTHLY, 500_000, now=NOW), None, now=NOW)
    book.release(book.reserve("k", MONTHLY, 500_000, now=NOW), now=NOW)
    st = book.status("k", MONTHLY, now=NOW)
    assert (st["spent_micro_usd"], st["reserved_micro_usd"]) == (0, 0)


def test_blocked_request_gets_a_message_naming_budget_and_reset():
    book = BudgetBook()
    book.settle(book.reserve("team-a", MONTHLY, 900_000, now=NOW), 900_000, now=NOW)
    with pytest.raises(BudgetExceeded) as exc:
        book.reserve("team-a", MONTHLY, 200_000, now=NOW)
    e = exc.value
    assert "team-a" in e.message and "monthly budget of $1.00" in e.message
    assert "$0.90 spent" in e.message and "$0.20" in e.message
    assert "resets at 2026-04-01T00:00:00Z" in e.message
    assert e.retry_after == int((utc(2026, 4, 1) - NOW).total_seconds())
    book.reserve("team-a", MONTHLY, 100_000, now=NOW)  # exactly up to the limit is fine


def test_used_up_budget_admits_nothing_not_even_unpriced_requests():
    book = BudgetBook()
    book.settle(book.reserve("k", MONTHLY, 1_000_000, now=NOW), 1_000_000, now=NOW)
    with pytest.raises(BudgetExceeded):
        book.reserve("k", MONTHLY, 0, now=NOW)
    with pytest.raises(BudgetExceeded):
        BudgetBook().reserve("k", BudgetSpec("daily", 0), 0, now=NOW)


def test_warning_past_threshold():
    book = BudgetBook()
    assert not book.reserve("k", MONTHLY, 700_000, now=NOW).warning
    assert book.reserve("k", MONTHLY, 100_000, now=NOW).warning
    assert book.status("k", MONTHLY, now=NOW)["warning"] is True


async def _request(book: BudgetBook, admitted: list[int], i: int) -> None:
    await asyncio.sleep(random.random() / 1000)
    try:
        r = book.reserve("team-a", MONTHLY, 100_000)  # worst case $0.10
    except BudgetExceeded:
        return
    admitted.append(i)
    await asyncio.sleep(random.random() / 200)  # the upstream call
    book.settle(r, 100_000 - random.randrange(0, 2) * 50_000)  # real cost <= worst case


def test_fifty_concurrent_requests_never_overshoot_a_budget_for_ten():
    for _ in range(5):
        book, admitted = BudgetBook(), []

        async def main(book=book, admitted=admitted):
            await asyncio.gather(*(_request(book, admitted, i) for i in range(50)))

        asyncio.run(main())
        st = book.status("team-a", MONTHLY)
        assert st["spent_micro_usd"] <= MONTHLY.limit_micro_usd
        assert st["reserved_micro_usd"] == 0
        assert 10 <= len(admitted) < 50  # at least the ten worst cases fit; never all fifty


def test_threads_cannot_overshoot_either():
    book, admitted, lock = BudgetBook(), [], threading.Lock()
    start = threading.Barrier(16)

    def worker():
        start.wait()
        for _ in range(10):
            try:
                r = book.reserve("k", MONTHLY, 100_000)
            except BudgetExceeded:
                continue
            with lock:
                admitted.append(r)
            book.settle(r, 100_000)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 10
    assert book.status("k", MONTHLY)["spent_micro_usd"] == 1_000_000


@pytest.mark.parametrize(
    ("spec", "before", "after"),
    [
        (BudgetSpec("daily", 100), utc(2026, 1, 31, 23, 59, 59), utc(2026, 2, 1)),
        (BudgetSpec("weekly", 100), utc(2026, 3, 15, 23, 59, 59), utc(2026, 3, 16)),  # Sunday -> Monday
        (BudgetSpec("monthly", 100), utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1)),
    ],
)
def test_period_resets_at_the_calendar_boundary(spec, before, after):
    book = BudgetBook()
    book.settle(book.reserve("k", spec, 100, now=before), 100, now=before)
    with pytest.raises(BudgetExceeded):
        book.reserve("k", spec, 1, now=before)
    assert book.status("k", spec, now=after)["spent_micro_usd"] == 0
    book.reserve("k", spec, 100, now=after)


def test_a_request_straddling_the_boundary_charges_the_period_it_started_in():
    spec = BudgetSpec("daily", 1000)
    book = BudgetBook()
    r = book.reserve("k", spec, 500, now=utc(2026, 1, 1, 23, 59, 59))
    book.settle(r, 400, now=utc(2026, 1, 2, 0, 0, 1))
    st = book.status("k", spec, now=utc(2026, 1, 2, 0, 0, 2))
    assert (st["spent_micro_usd"], st["reserved_micro_usd"]) == (0, 0)
    # the monthly figure still holds it: same month
    assert book.status("k", BudgetSpec("monthly", 1000), now=utc(2026, 1, 2))["spent_micro_usd"] == 400


def test_spend_is_kept_for_every_period_so_switching_budgets_is_exact():
    book = BudgetBook()
    book.settle(book.reserve("k", MONTHLY, 300, now=NOW), 300, now=NOW)
    book.add_spend("k", 200, now=NOW)
    book.add_spend("other", None, now=NOW)
    assert book.status("k", BudgetSpec("daily", 10_000), now=NOW)["spent_micro_usd"] == 500
    assert book.status("k", BudgetSpec("weekly", 10_000), now=NOW)["spent_micro_usd"] == 500
    assert book.tracks("k") and not book.tracks("other")


def _rec(key, ts, cost, **kw):
    return {"request_id": f"r{ts}", "ts": ts.timestamp(), "key_name": key, "cost_micro_usd": cost, **kw}


def test_restart_rebuilds_spend_from_the_records(tmp_path):
    store = UsageStore(tmp_path)
    book = BudgetBook(tmp_path)
    for ts, cost in [(NOW, 100), (NOW - timedelta(hours=14), 20), (utc(2026, 3, 9, 0, 0, 1), 3),
                     (utc(2026, 3, 1), 4000), (utc(2026, 2, 28, 23, 59), 50_000)]:
        store.record(_rec("team-a", ts, cost))
        book.add_spend("team-a", cost, now=ts)
    store.record(_rec("team-a", NOW, None))  # unpriced: no cost, never a guess
    store.record(_rec("team-b", NOW, 7, attempt=0, final=False))  # a failed attempt still cost money
    store.record(_rec(None, NOW, 999))
    store.close()

    fresh = BudgetBook(tmp_path)
    assert fresh.rebuild(UsageStore(tmp_path), now=NOW) == 2
    for period, spent in [("daily", 100), ("weekly", 123), ("monthly", 4123)]:
        spec = BudgetSpec(period, 10**9)
        assert fresh.status("team-a", spec, now=NOW)["spent_micro_usd"] == spent
        assert book.status("team-a", spec, now=NOW)["spent_micro_usd"] == spent  # same as the live book
    assert fresh.status("team-b", MONTHLY, now=NOW)["spent_micro_usd"] == 7


def test_rebuild_for_one_key_leaves_the_others(tmp_path):
    store = UsageStore(tmp_path)
    store.record(_rec("a", NOW, 10))
    store.record(_rec("b", NOW, 20))
    store.flush()
    book = BudgetBook()
    book.add_spend("b", 999, now=NOW)
    book.rebuild(store, now=NOW, key_name="a")
    assert book.status("a", MONTHLY, now=NOW)["spent_micro_usd"] == 10
    assert book.status("b", MONTHLY, now=NOW)["spent_micro_usd"] == 999
    store.close()


def test_api_budgets_persist_and_override_config(tmp_path):
    book = BudgetBook(tmp_path)
    configured = BudgetSpec("monthly", 50_000_000)
    assert book.effective("team-a", configured) is configured
    book.set_override("team-a", BudgetSpec("daily", 2_000_000, 0.9))
    again = BudgetBook(tmp_path)
    assert again.effective("team-a", configured) == BudgetSpec("daily", 2_000_000, 0.9)
    assert again.overrides() == {"team-a": BudgetSpec("daily", 2_000_000, 0.9)}
    raw = orjson.loads((tmp_path / "budgets.json").read_bytes())
    assert raw == {"budgets": {"team-a": {"period": "daily", "limit_usd": "2.000000", "warn_at": 0.9}}}
    again.set_override("team-a", None)
    assert BudgetBook(tmp_path).effective("team-a", configured) is configured


def test_another_workers_change_is_picked_up(tmp_path):
    mine = BudgetBook(tmp_path, reload_every=0)
    assert mine.effective("k", None) is None
    BudgetBook(tmp_path).set_override("k", BudgetSpec("weekly", 5))
    assert mine.effective("k", None) == BudgetSpec("weekly", 5)


def test_broken_budgets_file_is_a_clear_error(tmp_path):
    (tmp_path / "budgets.json").write_text('{"budgets": {"k": {"period": "hourly", "limit_usd": 1}}}')
    with pytest.raises(ValueError, match=r"budgets\.json: budget period must be one of"):
        BudgetBook(tmp_path)
