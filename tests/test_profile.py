"""Machine profiles: fitting, the measured machine as a topology, and their use by the simulator."""
import dataclasses
import math

import pytest

from simcore.engine import simulate
from experiments.output import write_profile
from simcore.calibration import Calibration
from simcore.fitting import efficiency_curve, fit_collective_efficiency, fit_hockney, fit_reduce_cost
from topologies.profile import LinkClass, MachineProfile, load_profile
from workloads.ops import Collective, Compute, Recv, Send
from workloads.scenario import ScenarioError, load_scenario, scenario_from_dict, with_profile

REL = 1e-9
SIZES = [8, 1024, 65536, 1 << 20, 16 << 20]


def profile(**changes):
    base = MachineProfile(
        name="test", backend="mpi", flops_per_s=5e10,
        link_classes={"intra_node": LinkClass(2e-6, 10e9), "inter_node": LinkClass(10e-6, 1e9)},
    )
    return dataclasses.replace(base, **changes)


def test_fit_hockney_recovers_latency_and_bandwidth_exactly():
    times = [3e-6 + n / 4e9 for n in SIZES]
    latency_s, bandwidth = fit_hockney(SIZES, times)
    assert latency_s == pytest.approx(3e-6, rel=1e-9)
    assert bandwidth == pytest.approx(4e9, rel=1e-9)


def test_fit_hockney_needs_two_sizes():
    with pytest.raises(ValueError, match="two distinct sizes"):
        fit_hockney([1024], [1e-6])


def test_efficiency_curve_is_empty_when_the_line_fits_and_corrects_it_otherwise():
    line = [3e-6 + n / 4e9 for n in SIZES]
    assert efficiency_curve(SIZES, line, 3e-6, 4e9) == ()
    # Mid sizes at half the bandwidth (a protocol switch, say): the curve
    # makes the line pass through each measured point.
    slow = [3e-6 + n / (2e9 if 1000 < n < 2e6 else 4e9) for n in SIZES]
    curve = dict(efficiency_curve(SIZES, slow, 3e-6, 4e9))
    assert curve[65536] == pytest.approx(0.5, rel=1e-9)
    assert curve[1 << 20] == pytest.approx(0.5, rel=1e-9)
    assert curve[16 << 20] == pytest.approx(1.0, rel=1e-9)
    link = LinkClass(3e-6, 4e9, tuple(sorted(curve.items())))
    for n, t in zip(SIZES, slow):
        if n in curve:
            assert link.time_s(n) == pytest.approx(t, rel=1e-9)


def test_efficiency_interpolates_in_log_size_and_is_flat_outside():
    link = LinkClass(0.0, 1e9, ((1000, 0.5), (100000, 1.0)))
    assert link.efficiency_at(10) == 0.5
    assert link.efficiency_at(10**6) == 1.0
    assert link.efficiency_at(10000) == pytest.approx(0.75, rel=1e-12)


def test_profile_machine_gives_hockney_per_message_between_ranks_of_a_host():
    machine = profile(link_classes={"intra_node": LinkClass(2e-6, 10e9, ((1024, 0.25), (1 << 20, 1.0)))})
    topology = machine.topology(2)
    nbytes = 1024
    programs = [[Send(peer=1, nbytes=nbytes)], [Recv(peer=0, nbytes=nbytes)]]
    result = simulate(topology, programs, calibration=Calibration(message_efficiency=machine.message_efficiency(2)))
    assert result.makespan_s == pytest.approx(2e-6 + nbytes / (10e9 * 0.25), rel=REL)


def test_profile_places_ranks_as_measured_and_charges_inter_node_figures():
    machine = profile(rank_hosts=("a", "a", "b", "b"))
    assert machine.placement(4) == [0, 0, 1, 1]
    assert machine.placement(8) == [0, 0, 1, 1, 2, 2, 3, 3]  # blocks of the measured ranks per host
    topology = machine.topology(4)
    nbytes = 10**6
    programs = [[Send(peer=2, nbytes=nbytes)], [], [Recv(peer=0, nbytes=nbytes)], []]
    result = simulate(topology, programs)
    # Latency 10 us across hosts; the slowest link on the way is the 1 GB/s one.
    assert result.makespan_s == pytest.approx(10e-6 + nbytes / 1e9, rel=REL)


def test_profile_without_inter_node_class_cannot_place_ranks_on_two_hosts():
    machine = profile(link_classes={"intra_node": LinkClass(2e-6, 10e9)}, rank_hosts=("a", "b"))
    with pytest.raises(ValueError, match="inter_node"):
        machine.topology(2)


def test_reduction_cost_adds_to_ring_allreduce_as_its_closed_form_says():
    p, n, gamma = 4, 4 * 2**20, 2e-10
    machine = profile()
    topology = machine.topology(p)
    programs = [[Collective("allreduce", n, algorithm="ring")] for _ in range(p)]
    result = simulate(topology, programs, calibration=Calibration(reduce_s_per_byte=gamma))
    block = n // p
    # 2(p-1) steps of a + block/B, and the p-1 reduce-scatter steps each reduce a block.
    expected = 2 * (p - 1) * (2e-6 + block / 10e9) + (p - 1) * block * gamma
    assert result.makespan_s == pytest.approx(expected, rel=REL)


def test_fit_reduce_cost_recovers_a_known_cost():
    p, gamma = 4, 3e-10
    programs = {r: [{"kind": "allreduce", "nbytes": n, "algorithm": "ring"} for n in (1 << 16, 1 << 20, 1 << 23)]
                for r in range(p)}
    scenario = scenario_from_dict({"topology": {"builder": "switch", "n": p},
                                   "workload": {"kind": "programs", "ranks": programs}})
    machine = profile()
    truth = simulate(machine.topology(p), scenario.programs(),
                     calibration=Calibration(reduce_s_per_byte=gamma)).op_time_s()
    # Ops run one after another here, so an op's time is its own end minus its start.
    assert fit_reduce_cost(with_profile(scenario, machine), truth) == pytest.approx(gamma, rel=1e-6)


def test_profile_round_trips_through_a_file(tmp_path):
    machine = profile(rank_hosts=("a", "b"), reduce_s_per_byte=1e-10, memory_bandwidth_bytes_per_s=3e9,
                      link_classes={"intra_node": LinkClass(2e-6, 10e9, ((8, 0.1), (1024, 0.5))),
                                    "inter_node": LinkClass(1e-5, 1e9)})
    path = tmp_path / "p.yaml"
    write_profile(machine, path)
    assert load_profile(path) == machine


def test_scenario_names_a_profile_relative_to_its_file(tmp_path):
    write_profile(profile(rank_hosts=("h", "h")), tmp_path / "machine.yaml")
    (tmp_path / "s.yaml").write_text(
        "topology: {builder: ring, n: 2}\n"
        "workload: {kind: collective, op: allreduce, nbytes: 1048576}\n"
        "profile: machine.yaml\n"
    )
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.profile.name == "test"
    assert scenario.topology.name == "profile:test"
    assert scenario.topology.rank_flops_per_s == (5e10, 5e10)


def test_a_bad_profile_is_one_clear_error_naming_the_file(tmp_path):
    (tmp_path / "machine.yaml").write_text("compute: {flops_per_s: -1}\nlink_classes: {intra_node: {latency_s: 1.0e-6, bandwidth_bytes_per_s: 1.0e+9}}\n")
    (tmp_path / "s.yaml").write_text(
        "topology: {builder: ring, n: 2}\nworkload: {kind: collective, op: allreduce, nbytes: 8}\nprofile: machine.yaml\n"
    )
    with pytest.raises(ScenarioError, match=r"machine\.yaml.*flops_per_s"):
        load_scenario(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(
        "topology: {builder: ring, n: 2}\nworkload: {kind: collective, op: allreduce, nbytes: 8}\nprofile: missing.yaml\n"
    )
    with pytest.raises(ScenarioError, match="missing.yaml"):
        load_scenario(tmp_path / "s.yaml")


def test_a_native_collective_correction_scales_the_bytes_of_that_collective_only():
    p, n = 4, 4 * 2**20
    machine = profile(collective_efficiency={"allreduce": ((1024, 0.5), (1 << 30, 0.5))})
    topology = machine.topology(p)
    programs = [[Collective("allreduce", n, algorithm="ring"), Collective("allgather", n, algorithm="ring")]
                for _ in range(p)]
    result = simulate(topology, programs, calibration=Calibration(collective_efficiency=machine.collective_factor()))
    block = n // p
    records = result.records[result.records["rank"] == 0]
    allreduce = records[records["kind"] == "allreduce"].iloc[0]
    allgather = records[records["kind"] == "allgather"].iloc[0]
    # Half the efficiency: each step's bytes take twice as long; latency does not change.
    assert allreduce["end_s"] - allreduce["start_s"] == pytest.approx(2 * (p - 1) * (2e-6 + 2 * block / 10e9), rel=REL)
    assert allgather["end_s"] - allgather["start_s"] == pytest.approx((p - 1) * (2e-6 + block / 10e9), rel=REL)
    assert machine.collective_factor(native=False) is None


def test_fit_collective_efficiency_recovers_known_factors():
    p = 4
    sizes = (1 << 16, 1 << 20, 1 << 23)
    programs = {r: [{"kind": "allreduce", "nbytes": n} for n in sizes] + [{"kind": "allgather", "nbytes": n} for n in sizes]
                for r in range(p)}
    scenario = with_profile(scenario_from_dict({"topology": {"builder": "switch", "n": p},
                                                "workload": {"kind": "programs", "ranks": programs}}), profile())
    truth_curves = {"allreduce": tuple((n, 0.6) for n in sizes), "allgather": tuple((n, 0.8) for n in sizes)}
    truth = simulate(scenario.topology, scenario.programs(), calibration=Calibration(
        collective_efficiency=dataclasses.replace(profile(), collective_efficiency=truth_curves).collective_factor()
    )).op_time_s()
    fitted = fit_collective_efficiency(scenario, truth)
    for op, want in (("allreduce", 0.6), ("allgather", 0.8)):
        for nbytes, factor in fitted[op]:
            assert factor == pytest.approx(want, rel=1e-9), (op, nbytes)


def test_traffic_between_hosts_runs_at_the_network_speed_even_when_faster_than_shared_memory():
    machine = profile(link_classes={"intra_node": LinkClass(1e-6, 5e9), "inter_node": LinkClass(3e-6, 20e9)},
                      rank_hosts=("a", "a", "b", "b"))
    nbytes = 16 * 2**20
    between = simulate(machine.topology(4), [[Send(peer=2, nbytes=nbytes)], [], [Recv(peer=0, nbytes=nbytes)], []])
    assert between.makespan_s == pytest.approx(3e-6 + nbytes / 20e9, rel=REL)
    within = simulate(machine.topology(4), [[Send(peer=1, nbytes=nbytes)], [Recv(peer=0, nbytes=nbytes)], [], []])
    assert within.makespan_s == pytest.approx(1e-6 + nbytes / 5e9, rel=REL)


def test_two_ranks_of_a_host_share_its_nic():
    machine = profile(rank_hosts=("a", "a", "b", "b"))  # inter: 10 us, 1 GB/s
    nbytes = 10**6
    programs = [[Send(peer=2, nbytes=nbytes)], [Send(peer=3, nbytes=nbytes)],
                [Recv(peer=0, nbytes=nbytes)], [Recv(peer=1, nbytes=nbytes)]]
    assert simulate(machine.topology(4), programs).makespan_s == pytest.approx(10e-6 + 2 * nbytes / 1e9, rel=REL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_profile_figures_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError):
        LinkClass(1e-6, bad)
    with pytest.raises(ValueError):
        LinkClass(1e-6, 1e9, ((1024, bad),))
    with pytest.raises(ValueError):
        profile(flops_per_s=bad)


def test_fit_hockney_rejects_repeated_sizes_and_nan_and_bounds_flat_times_by_the_largest_message():
    with pytest.raises(ValueError, match="distinct"):
        fit_hockney([1024, 1024], [1e-6, 2e-6])
    with pytest.raises(ValueError):
        fit_hockney([8, 1024], [1e-6, float("nan")])
    latency_s, bandwidth = fit_hockney([8, 1 << 20], [1e-5, 1e-5])
    assert bandwidth == pytest.approx((1 << 20) / 1e-5, rel=1e-9)


def test_a_measured_memory_bandwidth_times_the_bytes_a_compute_moves():
    # The roofline: 0 FLOPs and 6e6 bytes at 3 GB/s take 2 ms; 1e9 FLOPs at
    # 5e10 FLOP/s and 3e6 bytes take max(20 ms, 1 ms).
    machine = profile(memory_bandwidth_bytes_per_s=3e9)
    topology = machine.topology(2)
    assert topology.rank_memory_bandwidth_bytes_per_s == (3e9, 3e9)
    result = simulate(topology, [[Compute(0.0, nbytes=6_000_000), Compute(1e9, nbytes=3_000_000)], []])
    times = (result.records["end_s"] - result.records["start_s"]).tolist()
    assert times == [pytest.approx(2e-3, rel=REL), pytest.approx(0.02, rel=REL)]
    # Unmeasured, memory moves are free, as before.
    assert math.isinf(profile().topology(2).rank_memory_bandwidth_bytes_per_s[0])


# -- emulated profiles: the transport on shaped links, applied to the scenario's own topology --------

def emulated_profile(**changes):
    base = MachineProfile(
        name="emu", backend="torch", flops_per_s=2e10, network="emulated",
        link_classes={"emulated": LinkClass(200e-6, 12.5e6, ((1024, 0.5), (1 << 20, 0.95), (16 << 20, 0.96)))},
    )
    return dataclasses.replace(base, **changes)


def test_an_emulated_profile_keeps_the_topology_and_sets_overheads_frames_and_compute():
    from topologies import LinkSpec, NodeSpec, tree

    topo = tree(4, arity=2, link=LinkSpec(25e6, latency_s=1e-3), node=NodeSpec(flops_per_s=1e12))
    machine = emulated_profile()
    emulated = machine.emulated_topology(topo)
    assert list(emulated.graph.nodes) == list(topo.graph.nodes) and list(emulated.links) == list(topo.links)
    assert emulated.link_bandwidth_bytes_per_s == topo.link_bandwidth_bytes_per_s
    assert emulated.rank_flops_per_s == (2e10,) * 4
    for (u, v), latency_s in zip(emulated.links, emulated.link_latency_s):
        ranks = sum(emulated.graph.nodes[n]["role"] == "compute" for n in (u, v))
        # Half the overhead per rank end; one stored frame on a switch-to-switch link; the 1 ms is not emulated.
        assert latency_s == pytest.approx(ranks * 100e-6 if ranks else 1514 / 25e6, rel=REL)
    # Rank 0 to rank 3 crosses 4 links: the overhead once, two frames between switches.
    assert emulated.route(0, 3).latency_s == pytest.approx(200e-6 + 2 * 1514 / 25e6, rel=REL)
    assert emulated.route(0, 1).latency_s == pytest.approx(200e-6, rel=REL)
    # The shaped rate's fraction at each size, whatever the pair.
    efficiency = machine.message_efficiency(4)
    assert efficiency(0, 3, 1 << 20) == efficiency(2, 1, 1 << 20) == 0.95


def test_a_scenario_with_an_emulated_profile_is_simulated_on_its_own_links(tmp_path):
    machine = emulated_profile(measurements={"incast": [{"senders": 2}]})
    path = write_profile(machine, tmp_path / "emu.yaml")
    assert load_profile(path) == machine and load_profile(path).network == "emulated"
    (tmp_path / "s.yaml").write_text("topology: {builder: switch, n: 2, bandwidth_bytes_per_s: 12.5e+6}\n"
                                     "workload: {kind: collective, op: allreduce, algorithm: ring, nbytes: 16777216}\n"
                                     "profile: emu.yaml\n")
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.topology.name == "switch" and scenario.profile.network == "emulated"
    # Ring all-reduce of 16 MiB on 2 ranks: two steps of 8 MiB each way, each
    # after one overhead, at the fraction the curve gives 8 MiB (3/4 of the way
    # from 1 MiB to 16 MiB in log size: 0.9575).
    result = simulate(scenario.topology, scenario.programs(),
                      calibration=Calibration.from_profile(scenario.profile, 2))
    assert result.makespan_s == pytest.approx(2 * (200e-6 + (8 << 20) / (12.5e6 * 0.9575)), rel=REL)
    # A scenario that names it keeps it through its dict (as it reaches the ranks of a real run).
    again = scenario_from_dict(scenario.to_dict())
    assert again.topology.link_latency_s == scenario.topology.link_latency_s


def test_an_emulated_profile_needs_its_link_class_and_a_known_network():
    with pytest.raises(ValueError, match="link_classes must include emulated"):
        emulated_profile(link_classes={"intra_node": LinkClass(1e-6, 1e9)})
    with pytest.raises(ValueError, match="profile.network must be one of host, emulated"):
        emulated_profile(network="wifi")
