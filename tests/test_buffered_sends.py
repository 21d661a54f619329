"""Sends that return before their bytes arrive (Calibration.eager_bytes, send_buffer_bytes), in closed form.

gloo's send returns once its bytes are in the socket's buffer, MPI's at once
below its eager limit; a rank that sends to several peers in turn then has
their messages share its link.  Every case is on a switch of 1 MB/s links
without latency, where the times are fractions of a second.
"""
import dataclasses
import functools

import pytest

from simcore.calibration import Calibration
from simcore.engine import REFERENCE, SimulationError, simulate
from simcore.fitting import fit_send_buffering
from topologies import LinkSpec, switch
from topologies.profile import LinkClass, MachineProfile
from workloads.ops import Collective, Irecv, Isend, Recv, Send, Wait

MB = 1_000_000
ENGINES = pytest.mark.parametrize("run", [simulate, functools.partial(simulate, fast_paths=REFERENCE)],
                                  ids=["fast", "reference"])


def _times(result):
    return [(r.rank, r.kind, round(r.start_s, 9), round(r.end_s, 9)) for r in result.records.itertuples()]


def _two_sends(run, calibration):
    topo = switch(3, link=LinkSpec(1e6, latency_s=0.0))
    programs = [[Send(1, MB), Send(2, MB)], [Recv(0, MB)], [Recv(0, MB)]]
    return _times(run(topo, programs, calibration=calibration))


@ENGINES
def test_without_buffering_each_send_waits_for_its_message(run):
    assert _two_sends(run, Calibration()) == [
        (0, "send", 0.0, 1.0), (0, "send", 1.0, 2.0), (1, "recv", 0.0, 1.0), (2, "recv", 0.0, 2.0)]


@ENGINES
def test_eager_sends_return_at_once_and_their_messages_share_the_link(run):
    # Both messages leave rank 0's link together at half its rate each.
    assert _two_sends(run, Calibration(eager_bytes=MB)) == [
        (0, "send", 0.0, 0.0), (0, "send", 0.0, 0.0), (1, "recv", 0.0, 2.0), (2, "recv", 0.0, 2.0)]


@ENGINES
def test_a_send_larger_than_the_buffer_returns_when_only_the_buffer_is_left(run):
    # 0.5 MB alone (0.5 s), then the first message's last 0.5 MB shares the link
    # with the second's first 0.5 MB (1 s), then the second's last 0.5 MB alone.
    assert _two_sends(run, Calibration(send_buffer_bytes=MB // 2)) == [
        (0, "send", 0.0, 0.5), (0, "send", 0.5, 1.5), (1, "recv", 0.0, 1.5), (2, "recv", 0.0, 2.0)]


@ENGINES
def test_a_lone_message_arrives_when_an_unbuffered_one_would(run):
    topo = switch(2, link=LinkSpec(1e6, latency_s=1e-3))
    programs = [[Send(1, 3 * MB)], [Recv(0, 3 * MB)]]
    plain = run(topo, programs).records
    buffered = run(topo, programs, calibration=Calibration(send_buffer_bytes=MB)).records
    # Latency 1 ms per link, two links: the send returns as its first 2 MB arrive.
    assert buffered["end_s"].tolist() == pytest.approx([2.002, 3.002], abs=1e-12)
    assert plain["end_s"].tolist() == pytest.approx([3.002, 3.002], abs=1e-12)


@ENGINES
def test_messages_between_two_ranks_arrive_in_the_order_they_were_sent(run):
    # The 10 B message would finish first on a path of its own; it follows the 1 MB
    # sent before it (1 s, then 10 us), and each receive gets its own size (no mismatch).
    topo = switch(2, link=LinkSpec(1e6, latency_s=0.0))
    programs = [[Send(1, MB), Send(1, 10)], [Recv(0, MB), Recv(0, 10)]]
    times = _times(run(topo, programs, calibration=Calibration(eager_bytes=MB)))
    assert times == [(0, "send", 0.0, 0.0), (0, "send", 0.0, 0.0),
                     (1, "recv", 0.0, 1.0), (1, "recv", 1.0, 1.00001)]


@ENGINES
def test_messages_to_one_rank_leave_one_after_the_other(run):
    # Rank 1's 1 MB (eager) then 2 MB to rank 0 cross one connection: the first
    # arrives at 1 s, not at 2 s as two flows sharing the link would have it.
    topo = switch(2, link=LinkSpec(1e6, latency_s=0.0))
    programs = [[Irecv(1, MB, handle="a"), Irecv(1, 2 * MB, handle="b"), Wait(("a", "b"))],
                [Send(0, MB), Send(0, 2 * MB)]]
    records = run(topo, programs, calibration=Calibration(eager_bytes=MB, send_buffer_bytes=MB // 2)).records
    rank0 = records[records["rank"] == 0].set_index("op_index")
    assert rank0.loc[0, "end_s"] == pytest.approx(1.0) and rank0.loc[1, "end_s"] == pytest.approx(3.0)
    # The second send returns once its first 1.5 MB have arrived, after the 1 MB before it.
    assert records[records["rank"] == 1]["end_s"].tolist() == pytest.approx([0.0, 2.5])


@ENGINES
def test_nonblocking_sends_complete_at_once_and_waits_see_it(run):
    topo = switch(3, link=LinkSpec(1e6, latency_s=0.0))
    programs = [[Isend(1, MB, handle="a"), Isend(2, MB, handle="b"), Wait(("a", "b"))],
                [Irecv(0, MB, handle="r"), Wait(("r",))], [Recv(0, MB)]]
    records = run(topo, programs, calibration=Calibration(eager_bytes=MB)).records
    rank0 = records[records["rank"] == 0]
    assert rank0["end_s"].tolist() == [0.0, 0.0, 0.0]
    assert records[records["rank"] != 0]["end_s"].max() == pytest.approx(2.0)


@ENGINES
def test_a_binomial_broadcast_root_sends_to_its_children_at_once(run):
    # Root 0 of 4: eager sends to 2 then 1, then 2 sends to 3.  Rank 0's link
    # carries both of its messages at 0.5 MB/s: both arrive at 2 s, and 2's
    # message to 3 takes 1 s more.  Without buffering: 1 s, then 1 s for both pairs.
    topo = switch(4, link=LinkSpec(1e6, latency_s=0.0))
    programs = [[Collective("broadcast", MB, algorithm="binomial")] for _ in range(4)]
    assert run(topo, programs).records["end_s"].max() == pytest.approx(2.0)
    buffered = run(topo, programs, calibration=Calibration(eager_bytes=MB)).records
    assert buffered["end_s"].max() == pytest.approx(3.0)


def test_a_receive_that_never_comes_is_still_reported():
    topo = switch(2, link=LinkSpec(1e6, latency_s=0.0))
    with pytest.raises(SimulationError, match="never received|not received|unreceived"):
        simulate(topo, [[Send(1, 10)], []], calibration=Calibration(eager_bytes=MB))


def test_calibration_refuses_negative_or_fractional_sizes():
    with pytest.raises(ValueError, match="eager_bytes must be an integer >= 0"):
        Calibration(eager_bytes=-1)
    with pytest.raises(ValueError, match="send_buffer_bytes must be an integer >= 0"):
        Calibration(send_buffer_bytes=1.5)


def test_fit_reads_gloo_and_mpi_ping_pongs():
    sizes = [8, MB, 4 * MB, 16 * MB]
    rate = 12e6
    one_way = [170e-6, MB / rate, 4 * MB / rate, 16 * MB / rate]
    # gloo: sends up to 1 MB return at once, larger ones with 1.1 MB still to move.
    gloo_send = [10e-6, 300e-6, (4 * MB - 1.1e6) / rate, (16 * MB - 1.1e6) / rate]
    eager, buffer = fit_send_buffering(sizes, one_way, gloo_send, rate)
    assert eager == MB and buffer == pytest.approx(1.1e6, abs=1)
    # MPI: eager up to 1 MB, rendezvous above (the send returns as the message arrives).
    mpi_send = [10e-6, 200e-6, 4 * MB / rate, 16 * MB / rate]
    assert fit_send_buffering(sizes, one_way, mpi_send, rate) == (MB, 0)
    # Every send returned at once.
    assert fit_send_buffering(sizes, one_way, [1e-6] * 4, rate) == (16 * MB, 0)
    with pytest.raises(ValueError, match="one send time per size"):
        fit_send_buffering(sizes, one_way, [1e-6], rate)


def test_a_profile_keeps_its_transport_and_names_a_bad_one():
    profile = MachineProfile(name="p", backend="torch", flops_per_s=1e9, network="emulated",
                             link_classes={"emulated": LinkClass(1e-4, 12.5e6)},
                             eager_bytes=MB, send_buffer_bytes=1_100_000)
    data = profile.to_dict()
    assert data["transport"] == {"eager_bytes": MB, "send_buffer_bytes": 1_100_000}
    again = MachineProfile.from_dict(data)
    assert (again.eager_bytes, again.send_buffer_bytes) == (MB, 1_100_000)
    calibration = Calibration.from_profile(again, 4)
    assert (calibration.eager_bytes, calibration.send_buffer_bytes) == (MB, 1_100_000)
    assert "transport" not in dataclasses.replace(profile, eager_bytes=0, send_buffer_bytes=0).to_dict()
    data["transport"]["send_buffer_bytes"] = -5
    with pytest.raises(ValueError, match="transport.send_buffer_bytes must be an integer >= 0"):
        MachineProfile.from_dict(data, where="p.yaml")
