"""Links that are token buckets (Calibration.link_burst_bytes), in closed form.

A shaped link (an emulated link's htb, a cloud NIC's burst allowance) lets a
full bucket through at once when it has been idle.  Every case is on a switch
of 1 MB/s links without latency (a message crosses two links: the sender's
and the receiver's) with buckets of 0.25 MB, where the times are fractions
of a second.
"""
import dataclasses
import functools

import pytest
import simpy

from simcore.calibration import Calibration
from simcore.engine import REFERENCE, simulate
from simcore.fitting import fit_link_burst
from simcore.network import FlowNetwork
from topologies import LinkSpec, NodeSpec, switch
from topologies.profile import LinkClass, MachineProfile
from workloads.ops import Compute, Irecv, Isend, Recv, Send, Wait

MB = 1_000_000
BUCKET = Calibration(link_burst_bytes=MB // 4)
ENGINES = pytest.mark.parametrize("run", [simulate, functools.partial(simulate, fast_paths=REFERENCE)],
                                  ids=["fast", "reference"])


def _ends(run, programs, n=2, calibration=BUCKET, latency_s=0.0):
    topo = switch(n, link=LinkSpec(1e6, latency_s=latency_s), node=NodeSpec(flops_per_s=1e6))
    records = run(topo, programs, calibration=calibration).records
    return [(r.rank, r.kind, round(r.end_s, 9)) for r in records.itertuples()]


@ENGINES
def test_a_message_on_an_idle_path_gains_the_bucket(run):
    # 1 MB, the first 0.25 MB at once: 0.75 s.
    assert _ends(run, [[Send(1, MB)], [Recv(0, MB)]]) == [(0, "send", 0.75), (1, "recv", 0.75)]
    assert _ends(run, [[Send(1, MB)], [Recv(0, MB)]], calibration=Calibration()) == [
        (0, "send", 1.0), (1, "recv", 1.0)]


@ENGINES
def test_a_message_right_behind_another_finds_the_bucket_empty(run):
    assert _ends(run, [[Send(1, MB), Send(1, MB)], [Recv(0, MB), Recv(0, MB)]]) == [
        (0, "send", 0.75), (0, "send", 1.75), (1, "recv", 0.75), (1, "recv", 1.75)]


@ENGINES
def test_an_idle_link_refills_at_its_rate_up_to_the_bucket(run):
    # 0.1 s idle refills 0.1 MB (the second message takes 0.9 s); 0.5 s, the whole 0.25 MB.
    for idle_s, second_s in ((0.1, 0.9), (0.5, 0.75)):
        programs = [[Send(1, MB), Compute(flops=idle_s * 1e6), Send(1, MB)], [Recv(0, MB), Recv(0, MB)]]
        end = 0.75 + idle_s + second_s
        assert _ends(run, programs) == [(0, "send", 0.75), (0, "compute", 0.75 + idle_s), (0, "send", end),
                                        (1, "recv", 0.75), (1, "recv", end)]


@ENGINES
def test_messages_that_start_together_share_the_bucket(run):
    # Rank 0's link: each message passes half its bucket (0.125 MB) at once, then
    # they share the link at 0.5 MB/s: 0.875 MB each, 1.75 s.
    programs = [[Isend(1, MB, handle="a"), Isend(2, MB, handle="b"), Wait(("a", "b"))], [Recv(0, MB)], [Recv(0, MB)]]
    # (A non-blocking send's record ends when its message has arrived.)
    assert _ends(run, programs, n=3) == [(0, "isend", 1.75), (0, "isend", 1.75), (0, "wait", 1.75),
                                         (1, "recv", 1.75), (2, "recv", 1.75)]


def test_the_share_does_not_depend_on_which_rank_issues_first():
    # Two senders to one receiver start at 1 s, one after two computes, one after one:
    # the fast engine (which merges computes) and the reference issue them in different
    # orders; the receiver's bucket is halved between them either way.  Each passes
    # 0.125 MB, then they share rank 2's link: 0.875 MB each at 0.5 MB/s, 1.75 s.
    topo = switch(3, link=LinkSpec(1e6, latency_s=0.0), node=NodeSpec(flops_per_s=1e6))
    programs = [[Compute(flops=0.5e6), Compute(flops=0.5e6), Send(2, MB)], [Compute(flops=1e6), Send(2, MB)],
                [Recv(0, MB), Recv(1, MB)]]
    ends = [_ends_of(engine(topo, programs, calibration=BUCKET)) for engine in (simulate, functools.partial(simulate, fast_paths=REFERENCE))]
    assert ends[0] == ends[1]
    assert [e for e in ends[0] if e[1] == "send"] == [(0, "send", 2.75), (1, "send", 2.75)]


def _ends_of(result):
    return [(r.rank, r.kind, round(r.end_s, 9)) for r in result.records.itertuples()]


@ENGINES
def test_the_emptiest_bucket_on_the_path_sets_the_gain(run):
    # Rank 1's link empties at 0.75 s; rank 2 sends to rank 1 at 0.85 s: its own
    # link's bucket is full, rank 1's holds 0.1 MB, so 0.9 s.
    programs = [[Send(1, MB)], [Recv(0, MB), Recv(2, MB)], [Compute(flops=0.85e6), Send(1, MB)]]
    assert _ends(run, programs, n=3) == [(0, "send", 0.75), (1, "recv", 0.75), (1, "recv", 1.75),
                                         (2, "compute", 0.85), (2, "send", 1.75)]


@ENGINES
def test_a_message_within_the_bucket_costs_only_the_latency(run):
    # 1 ms per link, two links.
    assert _ends(run, [[Send(1, MB // 10)], [Recv(0, MB // 10)]], latency_s=1e-3) == [
        (0, "send", 0.002), (1, "recv", 0.002)]


@ENGINES
def test_buckets_and_buffered_sends_together(run):
    # An eager send returns at once; its message still gains the bucket.
    calibration = dataclasses.replace(BUCKET, eager_bytes=MB)
    assert _ends(run, [[Send(1, MB)], [Recv(0, MB)]], calibration=calibration) == [
        (0, "send", 0.0), (1, "recv", 0.75)]
    # A send that returns with half its message to go: the message arrives when one flow
    # would (0.75 s of transfer plus 0.1 s of latency), the part sent after the return
    # gaining nothing from the links' idling while the first part's last bytes crossed.
    calibration = dataclasses.replace(BUCKET, send_buffer_bytes=MB // 2)
    assert _ends(run, [[Send(1, MB)], [Recv(0, MB)]], calibration=calibration, latency_s=0.05) == [
        (0, "send", 0.35), (1, "recv", 0.85)]


@ENGINES
def test_a_link_refills_from_when_the_last_byte_left_not_from_the_delivery(run):
    # 0.1 s of latency (two links): rank 0's message leaves at 0.75 s and arrives at
    # 0.85 s; rank 2 sends to rank 1 at 0.8 s, so rank 1's link has been idle 0.05 s
    # (0.05 MB back): its message takes 0.95 s and arrives 0.1 s later.
    programs = [[Send(1, MB)], [Recv(0, MB), Recv(2, MB)], [Compute(flops=0.8e6), Send(1, MB)]]
    assert _ends(run, programs, n=3, latency_s=0.05) == [(0, "send", 0.85), (1, "recv", 0.85), (1, "recv", 1.85),
                                                         (2, "compute", 0.8), (2, "send", 1.85)]


def test_a_negative_or_fractional_bucket_is_refused():
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError, match="link_burst_bytes must be an integer >= 0"):
            Calibration(link_burst_bytes=bad)
    with pytest.raises(ValueError, match="burst_bytes must be finite and >= 0"):
        FlowNetwork(simpy.Environment(), [1e6], lambda message: None, burst_bytes=float("inf"))


def test_a_profile_keeps_its_bucket():
    profile = MachineProfile(name="p", backend="mpi", flops_per_s=1e9, network="emulated",
                             link_classes={"emulated": LinkClass(1e-4, 12.5e6)}, link_burst_bytes=32768)
    data = profile.to_dict()
    assert data["transport"] == {"link_burst_bytes": 32768}
    again = MachineProfile.from_dict(data)
    assert Calibration.from_profile(again, 4).link_burst_bytes == 32768
    data["transport"]["link_burst_bytes"] = "big"
    with pytest.raises(ValueError, match="transport.link_burst_bytes must be an integer >= 0"):
        MachineProfile.from_dict(data, where="p.yaml")


def test_fit_reads_the_bucket_and_the_rate_from_a_ping_pong():
    rate, overhead_s, bucket, fraction = 12.5e6, 50e-6, 32768, 0.96
    sizes = [8, 1024, 16384, 131072, MB, 2 * MB, 4 * MB, 16 * MB]

    def one_way(n):
        return overhead_s + max(n / fraction - bucket, 0.0) / rate

    times = [one_way(n) for n in sizes]
    # A size a few times the bucket gains part of it only (MPI's 16 KiB: 684 us where
    # a line would say 1.3 ms); it must not bend the line.
    times[2] = 684e-6
    fitted_bucket, fitted_fraction = fit_link_burst(sizes, times, overhead_s, rate)
    assert fitted_bucket == pytest.approx(bucket, abs=2)
    assert fitted_fraction == pytest.approx(fraction, rel=1e-9)
    # A bucket of 3 MB: only 4 and 16 MiB are twice it, and they give it.
    large = [overhead_s + max(n / fraction - 3e6, 0.0) / rate for n in sizes]
    assert fit_link_burst(sizes, large, overhead_s, rate) == (3_000_000, pytest.approx(fraction, rel=1e-9))
    # One usable size: no bucket to see.
    assert fit_link_burst([8, 16 * MB], [overhead_s, one_way(16 * MB)], overhead_s, rate)[0] == 0
    # A link that loses time at a message's start has no bucket.
    slow = [overhead_s + n / fraction / rate + 1e-3 for n in sizes]
    assert fit_link_burst(sizes, slow, overhead_s, rate) == (0, pytest.approx(16 * MB / (16 * MB / fraction + 1e-3 * rate)))
    with pytest.raises(ValueError, match="outweighs the overhead"):
        fit_link_burst([8], [1.0], 1.0, rate)


def test_a_transfer_started_by_a_message_the_bucket_passed_whole_takes_the_bucket_first():
    # a (1 MB) passes whole through a 1.5 MB bucket, and its delivery starts b (2 MB) at the same instant,
    # as a channel's next job starts: b takes the 0.5 MB left at once and sends 1.5 MB at 1 MB/s.
    env = simpy.Environment()
    got = {}

    def delivered(message):
        got[message] = env.now
        if message == "a":
            net.transfer((0,), 1e6, 0.0, 2_000_000, "b")

    net = FlowNetwork(env, [1e6], delivered, burst_bytes=1_500_000)
    net.transfer((0,), 1e6, 0.0, 1_000_000, "a")
    env.run()
    assert got == {"a": 0.0, "b": 1.5}
