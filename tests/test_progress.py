"""A progress callback reports a long run without changing it."""
import pandas as pd

from simcore import engine
from simcore.engine import REFERENCE, Simulator
from topologies import LinkSpec, ring
from workloads.ops import Collective


def test_progress_reports_increasing_time_and_leaves_the_result_unchanged(monkeypatch):
    monkeypatch.setattr(engine, "PROGRESS_EVERY_EVENTS", 100)
    topo = ring(16, link=LinkSpec(1e9, latency_s=1e-6))
    programs = [[Collective("allreduce", 16_000_000)] for _ in range(16)]
    calls = []
    # Message by message (the fast path would run the whole all-reduce in one go).
    with_progress = Simulator(topo, programs, fast_paths=REFERENCE).run(
        progress=lambda t, events: calls.append((t, events)))
    plain = Simulator(topo, programs).run()
    pd.testing.assert_frame_equal(with_progress.records, plain.records)
    assert with_progress.makespan_s == plain.makespan_s
    # 2(p-1) ring steps of p flows, each flow at least one event: many reports.
    assert len(calls) >= (2 * 15 * 16) // 100
    times = [t for t, _ in calls]
    events = [e for _, e in calls]
    assert times == sorted(times) and events == sorted(events)
    assert 0 < times[-1] <= plain.makespan_s
