"""Per-tenant SLO arithmetic, the usage recorder, and their agreement with alerts/slo.yaml."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import grpc
import pytest
from sentinel.observability import rules
from sentinel.platform import slo, usage
from sentinel.platform.usage import Counts
from sentinel.tenant import servicelevel
from sentinel.tenant.servicelevel import TenantWindows
from sentinel.tenant.v1 import tenant_service_pb2 as tsp

SPEC = Path(__file__).resolve().parents[2] / "alerts" / "slo.yaml"
NOW = dt.datetime(2026, 12, 4, 12, 30, 15, tzinfo=dt.UTC)
T = uuid.UUID("01900000-0000-7000-8000-000000000001")


def test_tenant_objectives_are_the_platform_ones() -> None:
    spec = rules.load_spec(SPEC)
    assert dt.timedelta(seconds=spec.period.seconds) == slo.PERIOD
    assert {s.name: float(s.objective) for s in spec.slos} == {o.name: o.target for o in slo.OBJECTIVES}
    assert float(spec.slo("latency").le) == slo.LATENCY_THRESHOLD_SECONDS
    assert set(spec.server_error_codes) == {c.name for c in slo.SERVER_ERROR_CODES}
    assert spec.slo("availability").codes == spec.server_error_codes and spec.slo("error-rate").non_ok
    pairs = {w.name: (w.long.seconds, w.short.seconds, float(w.factor)) for w in spec.burn_windows.values()}
    assert pairs == {p.name: (p.long.total_seconds(), p.short.total_seconds(), p.factor) for p in slo.BURN_PAIRS}
    assert float(spec.min_request_rate) == slo.MIN_REQUEST_RATE


def test_the_recorder_sorts_each_call_into_its_counts() -> None:
    rec = usage.Recorder("user")
    now = NOW.timestamp()
    rec.record(T, grpc.StatusCode.OK, 0.2, 0.05, now=now)            # 50 ms of it in transactions
    rec.record(T, grpc.StatusCode.NOT_FOUND, 0.1, now=now)           # client error: error-rate only
    rec.record(T, grpc.StatusCode.UNAVAILABLE, 0.3, now=now)         # server error: both
    rec.record(T, grpc.StatusCode.OK, 1.5, now=now)                  # slow
    rec.record(T, grpc.StatusCode.OK, 1.0, now=now)                  # exactly 1 s is within the SLO
    rec.record(T, grpc.StatusCode.OK, 0.1, now=now + 60)             # the next minute
    rec.record(None, grpc.StatusCode.INTERNAL, 9.0, now=now)         # no tenant: not counted
    minute = int(now // 60)
    assert rec.pending == {(T, minute): Counts(5, 1, 2, 1, pytest.approx(3.1), 0.05),  # type: ignore[arg-type]
                           (T, minute + 1): Counts(1, 0, 0, 0, 0.1)}


def test_a_jobs_run_is_work_not_a_request() -> None:
    import threading

    rec = usage.Recorder("worker")
    now = NOW.timestamp()

    def runs() -> None:  # the job worker records from several threads
        for _ in range(1000):
            rec.record_work(T, 0.5, 0.25, now=now)

    threads = [threading.Thread(target=runs) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rec.pending == {(T, int(now // 60)): Counts(0, 0, 0, 0, 2000.0, 1000.0)}


def _database_away(**kwargs: object) -> object:
    raise ConnectionRefusedError("database away")


def test_a_failed_flush_keeps_every_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage.db, "unit_of_work", _database_away)
    rec = usage.Recorder("tenant")
    rec.record(T, grpc.StatusCode.OK, 0.5, now=NOW.timestamp())
    with pytest.raises(ConnectionRefusedError, match="database away"):
        asyncio.run(rec.flush())
    rec.record(T, grpc.StatusCode.INTERNAL, 0.5, now=NOW.timestamp())
    assert list(rec.pending.values()) == [Counts(2, 1, 1, 0, 1.0)]


def test_pending_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "MAX_PENDING", 2)
    rec = usage.Recorder("audit")
    before = usage.DROPPED.labels("audit")._value.get()
    for i in range(3):
        rec.record(uuid.uuid4(), grpc.StatusCode.OK, 0.1, now=NOW.timestamp() + i)
    rec.record(next(iter(rec.pending))[0], grpc.StatusCode.OK, 0.1, now=NOW.timestamp())  # a known key still counts
    assert len(rec.pending) == 2 and sum(c.requests for c in rec.pending.values()) == 3
    assert usage.DROPPED.labels("audit")._value.get() == before + 1


def test_the_flusher_flushes_once_more_when_stopped() -> None:
    flushed: list[int] = []

    class Counting(usage.Recorder):
        async def flush(self) -> int:
            flushed.append(len(self.take()))
            return 0

    async def run() -> None:
        rec = Counting("user")
        task = asyncio.create_task(usage.run_flusher(rec, every_seconds=3600))
        await asyncio.sleep(0)
        rec.record(T, grpc.StatusCode.OK, 0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert flushed == [1]


def windows(period: Counts, **by_window: Counts) -> TenantWindows:
    names = {servicelevel.window_text(w): w for w in (*servicelevel.MINUTE_WINDOWS, *servicelevel.HOUR_WINDOWS)}
    result = TenantWindows(period=period, windows={w: Counts() for w in names.values()})
    for name, counts in by_window.items():
        result.windows[names[name.removeprefix("w")]] = counts
    return result


def test_the_service_level_follows_the_budget_policy() -> None:
    period = Counts(requests=100_000, server_errors=60, errors=600, slow=4_000, busy_seconds=1.0)
    level = servicelevel.service_level(T, NOW, windows(period), [("user", period)])
    by_name = {o.name: o for o in level.objectives}
    availability, error_rate, latency = by_name["availability"], by_name["error-rate"], by_name["latency"]
    assert availability.attained == pytest.approx(0.9994)
    assert availability.budget_remaining == pytest.approx(0.4)   # 60 of 100 allowed
    assert availability.budget_state == "caution"
    assert error_rate.budget_remaining == pytest.approx(0.4) and error_rate.budget_state == "caution"
    assert latency.budget_remaining == pytest.approx(0.2) and latency.budget_state == "warning"
    assert [b.window for b in latency.burn_rates] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    assert not any(b.HasField("rate") for b in latency.burn_rates)  # no requests in those windows
    assert level.period == "30d" and level.requests == 100_000


def test_no_requests_is_unknown_not_perfect() -> None:
    level = servicelevel.service_level(T, NOW, windows(Counts()), [])
    for o in level.objectives:
        assert not o.HasField("attained") and not o.HasField("budget_remaining")
        assert o.budget_state == "unknown" and list(o.firing) == [] and o.policy == servicelevel.NO_REQUESTS


def test_a_pair_fires_only_when_both_windows_burn_and_traffic_is_enough() -> None:
    fast = Counts(requests=1000, server_errors=20)  # 2 % errors: 20x the availability budget
    level = servicelevel.service_level(T, NOW, windows(Counts(requests=1000, server_errors=20), **{"w5m": fast,
                                       "w1h": fast}), [])
    assert list(level.objectives[0].firing) == ["page-fast"]
    quiet = Counts(requests=300, server_errors=20)  # under 0.1 req/s over the hour
    level = servicelevel.service_level(T, NOW, windows(quiet, **{"w5m": quiet, "w1h": quiet}), [])
    assert list(level.objectives[0].firing) == []
    recovered = Counts(requests=100)  # the spike is over: the short window is clean
    level = servicelevel.service_level(T, NOW, windows(fast, **{"w5m": recovered, "w1h": fast}), [])
    assert list(level.objectives[0].firing) == []


def rows(**tenants: Counts) -> list[tuple[uuid.UUID, str, Counts]]:
    return [(uuid.uuid5(uuid.NAMESPACE_DNS, slug), slug, c) for slug, c in tenants.items()]


def test_the_busy_tenant_is_noisy_only_while_a_neighbour_suffers() -> None:
    hog = Counts(requests=5000, busy_seconds=90.0)
    victim = Counts(requests=100, slow=10, busy_seconds=10.0)  # 10 % slow: 2x the latency budget
    total, impacted, ranked = servicelevel.rank(rows(hog=hog, victim=victim), noisy_share=0.3, limit=10)
    assert [(t.slug, t.noisy) for t in ranked] == [("hog", True), ("victim", False)]
    assert impacted == 1 and total.busy_seconds == 100.0
    assert ranked[0].busy_share == pytest.approx(0.9) and ranked[0].request_share == pytest.approx(5000 / 5100)
    assert ranked[1].latency_burn_rate == pytest.approx(2.0) and ranked[1].availability_burn_rate == 0.0
    # Nobody else burning: busy is not noisy.
    _, impacted, ranked = servicelevel.rank(rows(hog=hog, fine=Counts(requests=100, busy_seconds=10.0)),
                                            noisy_share=0.3, limit=10)
    assert impacted == 0 and not any(t.noisy for t in ranked)
    # A neighbour with a handful of requests is not evidence.
    _, impacted, _ = servicelevel.rank(rows(hog=hog, tiny=Counts(requests=3, slow=3, busy_seconds=4.0)),
                                       noisy_share=0.3, limit=10)
    assert impacted == 0
    _, _, ranked = servicelevel.rank(rows(hog=hog, victim=victim), noisy_share=0.3, limit=1)
    assert [t.slug for t in ranked] == ["hog"]


def test_a_tenant_heavy_on_the_database_alone_is_noisy_too() -> None:
    # Few, cheap-looking calls that hold the shared pool: 80 % of the database time, 20 % of handling.
    locker = Counts(requests=50, busy_seconds=20.0, db_seconds=19.0)
    busy = Counts(requests=5000, busy_seconds=70.0, db_seconds=4.0)
    victim = Counts(requests=100, slow=10, busy_seconds=10.0, db_seconds=1.0)
    total, impacted, ranked = servicelevel.rank(rows(locker=locker, busy=busy, victim=victim), noisy_share=0.3,
                                                limit=10)
    assert total.db_seconds == 24.0 and impacted == 1
    shown = {t.slug: t for t in ranked}
    assert shown["locker"].noisy and shown["locker"].db_share == pytest.approx(19 / 24)
    assert shown["locker"].busy_share == pytest.approx(0.2)
    assert shown["busy"].noisy and not shown["victim"].noisy  # busy: 70 % of the handling time
    assert [t.slug for t in ranked] == ["busy", "locker", "victim"]  # ordered by handling time


def test_ranking_parameters_are_checked() -> None:
    assert servicelevel.check_ranking(tsp.RankTenantUsageRequest()) == (60, "", 20)
    from sentinel.platform.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as e:
        servicelevel.check_ranking(tsp.RankTenantUsageRequest(window_minutes=3000, service="x", limit=500))
    assert [v.field for v in e.value.violations] == ["window_minutes", "service", "limit"]


@pytest.mark.parametrize(("window", "text"), [(dt.timedelta(minutes=5), "5m"), (dt.timedelta(hours=6), "6h"),
                                              (dt.timedelta(days=30), "30d"), (dt.timedelta(seconds=90), "90s")])
def test_window_text(window: dt.timedelta, text: str) -> None:
    assert servicelevel.window_text(window) == text


def test_the_burn_page_names_the_busiest_tenants() -> None:
    from sentinel.scheduler import slo as report

    ranking = tsp.RankTenantUsageResponse(impacted_tenants=2, tenants=[
        tsp.TenantUsage(slug="hog", busy_share=0.82, db_share=0.9, request_share=0.6, availability_burn_rate=0.0,
                        latency_burn_rate=0.5, noisy=True),
        tsp.TenantUsage(slug="quiet", busy_share=0.1, request_share=0.3)])
    lines = report.tenant_lines(ranking)
    assert lines[0] == "Busiest tenants over the last hour (2 other tenant(s) burning budget):"
    assert lines[1] == ("NOISY NEIGHBOUR hog: 82 % of handling time, 90 % of database time, 60 % of requests; "
                        "availability burn 0.0x, latency burn 0.5x")
    assert lines[2].startswith("quiet: 10 %") and "availability burn no data" in lines[2]
    assert report.tenant_lines(tsp.RankTenantUsageResponse()) == ["No per-tenant usage in the last hour."]


def test_a_failed_attribution_never_holds_the_page_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel.platform.config import Settings
    from sentinel.scheduler import periodic

    monkeypatch.setattr(servicelevel.db, "unit_of_work", _database_away)
    result: dict[str, object] = {}
    lines = asyncio.run(periodic._busiest_tenants(Settings(), result))
    assert lines == ["Tenant attribution unavailable: ConnectionRefusedError"] and result == {}
