"""experiments.calibrate: pairing of ping-pong records, and a real calibration end to end."""
import pandas as pd
import pytest

from executors.real.mpi import MPIExecutor
from experiments.calibrate import SETTLING_SIZES, one_way_times, ping_pong_scenario
from topologies.profile import load_profile

needs_mpi = pytest.mark.skipif(not MPIExecutor.is_available(), reason=MPIExecutor.unavailable_reason() or "-")


def test_one_way_time_is_half_the_median_round_trip_per_size_and_partner():
    sizes, partners, trips = [8, 1024], [1, 2], 3
    scenario = ping_pong_scenario(3, sizes, partners, round_trips=trips)
    program = scenario.programs()[0]
    assert SETTLING_SIZES >= 1
    assert len(program) == len(partners) * (SETTLING_SIZES + len(sizes)) * trips * 2
    assert [op.nbytes for op in program[:2 * trips * SETTLING_SIZES]] == [sizes[0]] * 2 * trips * SETTLING_SIZES
    # Rank 0's records for two repeats; round trip k of (partner, size) lasts
    # 10 us * (1 + partner) * (1 + size index) + k us, the same in both repeats;
    # the untimed trips before each partner's sweep last a second and count for nothing.
    rows = []
    for repeat in (0, 1):
        t = 0.0
        index = 0
        for p_i, partner in enumerate(partners):
            for s_i, nbytes in [(-1, sizes[0])] * SETTLING_SIZES + list(enumerate(sizes)):
                for k in range(trips):
                    rtt = 1.0 if s_i < 0 else 10e-6 * (1 + partner) * (1 + s_i) + k * 1e-6
                    rows.append((0, index, "send", "", partner, nbytes, 0.0, t, t + rtt / 2, float("nan"), repeat))
                    rows.append((0, index + 1, "recv", "", partner, nbytes, 0.0, t + rtt / 2, t + rtt, float("nan"), repeat))
                    index += 2
                    t += rtt
    records = pd.DataFrame(rows, columns=["rank", "op_index", "kind", "algorithm", "peer", "nbytes", "flops",
                                          "start_s", "end_s", "energy_j", "repeat"])
    times = one_way_times(records, partners, sizes, round_trips=trips)
    for partner in partners:
        for s_i in range(len(sizes)):
            # Median over trips (k = 0, 1, 2 -> k = 1) and repeats, halved.
            assert times[partner][s_i] == pytest.approx((10e-6 * (1 + partner) * (1 + s_i) + 1e-6) / 2, rel=1e-9)


@needs_mpi
@pytest.mark.mpi
def test_calibrate_writes_a_profile_a_scenario_can_use(tmp_path):
    from experiments import calibrate

    out = tmp_path / "machine.yaml"
    rc = calibrate.main(["--backend", "mpi", "--nranks", "2", "--sizes", "8", "65536", "1048576",
                         "--repeats", "2", "--no-collectives", "--out", str(out)])
    assert rc == 0
    machine = load_profile(out)
    intra = machine.link_classes["intra_node"]
    assert intra.latency_s >= 0 and intra.bandwidth_bytes_per_s > 0 and machine.flops_per_s > 0
    assert len(machine.rank_hosts) == 2
    # Memory moves of 1, 16 and 64 MiB were timed; the largest sets the bandwidth.
    moved = machine.measurements["memory_bytes_per_s_by_size"]
    assert sorted(int(n) for n in moved) == [1 << 20, 16 << 20, 64 << 20]
    assert machine.memory_bandwidth_bytes_per_s == moved[str(64 << 20)] > 0
    assert [n for n, _ in machine.measurements["ping_pong"][0]["one_way_s"]] == [8, 65536, 1048576]
    (tmp_path / "s.yaml").write_text("topology: {builder: ring, n: 2}\n"
                                     "workload: {kind: collective, op: allreduce, nbytes: 65536}\n"
                                     "profile: machine.yaml\n")
    from executors import get_executor
    from workloads.scenario import load_scenario

    result = get_executor("sim").run(load_scenario(tmp_path / "s.yaml"))
    assert result.makespan_s > 0


def test_calibrate_rejects_bad_options(capsys):
    from experiments import calibrate

    assert calibrate.main(["--backend", "mpi", "--nranks", "1"]) == 2
    assert calibrate.main(["--backend", "mpi", "--timeout", "0"]) == 2
    assert calibrate.main(["--backend", "mpi", "--sizes", "8"]) == 2
    err = capsys.readouterr().err
    assert "--nranks" in err and "--timeout" in err and "--sizes" in err
