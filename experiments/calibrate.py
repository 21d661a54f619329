"""Measure a real system and write a machine profile the simulator can use.

    python -m experiments.calibrate --backend mpi [--nranks 2] [--out PROFILE.yaml]
    mpiexec -n 16 python -m experiments.calibrate --backend mpi --out cluster.yaml
    python -m experiments.calibrate --backend torch --nranks 2

Runs three small scenarios through the real executor (so the measured code
is the code validation measures):

1. ping-pong between rank 0 and rank 1 and between rank 0 and the last rank,
   over a sweep of sizes: one-way time = round trip / 2.  Each pair is
   classed intra- or inter-node from the hosts the ranks ran on, and each
   class gets a latency and bandwidth fitted to t = a + n/B, plus a per-size
   efficiency curve where one line does not fit within 10%;
2. every rank computing at once, with the matrix product compute operations
   use: the compute speed under the machine's real contention;
3. collectives of each algorithm at a few sizes, lowered to point-to-point
   steps (algorithm mode) and native: stored in the profile, and used to fit
   the time spent reducing each received byte.

A scenario that names the profile (``profile: PROFILE.yaml``, or
``experiments.validate --profile``) is then simulated on the measured machine.

With ``--network emulated`` the ranks run on an emulated switch of shaped
links (``--rate``, default 100 Mbit/s; see ``executors.emulation``), and the
profile measures the transport rather than a machine: the per-message
overhead, the fraction of the shaped rate that TCP and the library reach and
the bytes an idle link lets through at once (the shaper's bucket), from a
ping-pong; when a send returns (at once up to an eager size, else with a
buffer's worth still to arrive); both go to ``transport`` in the profile;
how 1, 2 and 4 senders share one receiver's link (incast), the compute speed
and the collectives as above.  A scenario
simulated with that profile keeps its own topology (the one its emulated
network builds), so one profile serves every emulated topology.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from executors import backends, executor_class, get_executor
from executors.emulation import MAX_LINK_BITS_PER_S, MIN_LINK_BITS_PER_S
from executors.real import NETWORKS, RealOptions, RealRunError
from experiments.output import write_profile
from simcore.fitting import efficiency_curve, fit_collective_efficiency, fit_hockney, fit_link_burst, fit_send_buffering
from simcore.fitting import fit_reduce_cost as fit_reduce_cost_through_simulator
from topologies.profile import LinkClass, MachineProfile
from workloads.ops import DEFAULT_ALGORITHM
from workloads.scenario import scenario_from_dict, with_profile

DEFAULT_SIZES = (8, 1024, 16384, 131072, 1048576, 8388608, 33554432)
# On shaped links a size takes n / rate: 16 MiB is 1.3 s at 100 Mbit/s.
EMULATED_SIZES = (8, 1024, 16384, 131072, 1048576, 2097152, 4194304, 16777216)
EMULATED_RATE_MBIT = 100.0
EMULATED_NRANKS = 5  # rank 0 and four senders for the incast
INCAST_SENDERS = (1, 2, 4)
INCAST_NBYTES = 8 << 20
ROUND_TRIPS = 5
SETTLING_SIZES = 1  # untimed sizes before each partner's sweep
REDUCE_BYTES_MOVED = 3  # per reduced byte: two read, one written
COMPUTE_FLOPS = (1e8, 1e9, 4e9)
# Memory moves (compute operations of bytes and no FLOPs, as the transformer's
# norms and optimizer step are): the largest sets the profile's bandwidth.
MEMORY_NBYTES = (1 << 20, 16 << 20, 64 << 20)
COLLECTIVE_SIZES = (65536, 1048576, 8388608)
COLLECTIVES = (
    ("allreduce", "ring"),
    ("allreduce", "recursive_doubling"),
    ("allreduce", "rabenseifner"),
    ("allreduce", "binomial"),
    ("broadcast", "binomial"),
    ("allgather", "ring"),
    ("reduce_scatter", "ring"),
    ("alltoall", "pairwise"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--backend", required=True, choices=backends(real=True), help="real executor to measure")
    p.add_argument("--nranks", type=int, default=None,
                   help="processes to launch (default 2, or 5 with --network emulated; ignored inside an MPI job, "
                        "which sets its own)")
    p.add_argument("--network", default="host", choices=NETWORKS,
                   help="host (default): measure this machine (or cluster); emulated: measure TCP and the library "
                        "on an emulated switch of shaped links, for runs with --network emulated")
    p.add_argument("--rate", type=float, default=EMULATED_RATE_MBIT, metavar="MBIT",
                   help=f"with --network emulated: the shaped links' rate in Mbit/s (default {EMULATED_RATE_MBIT:g})")
    p.add_argument("--out", help="profile file to write (default results/profile-<backend>.yaml)")
    p.add_argument("--name", help="profile name (default <backend>-<host>-<N>ranks)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="BYTES",
                   help="ping-pong message sizes (default 8 B .. 32 MiB; 8 B .. 16 MiB with --network emulated)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats of each measurement (default 5; 3 with --network emulated)")
    p.add_argument("--launches", type=int, default=None,
                   help="ping-pong launches, the fastest per size kept (default 3, 1 with --network emulated; "
                        "inside a job they share it)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="a rank stuck this long in one operation ends the run (default 120 s)")
    p.add_argument("--hostfile", help="MPI hostfile, for a run launched across machines")
    p.add_argument("--no-collectives", action="store_true", help="skip the collective measurements (faster)")
    return p


def calibration_topology(nranks: int, rate_mbit: float | None = None) -> dict:
    """The switch the measurements run on: nominal on the host network (a real
    run there ignores it), the shaped links themselves on an emulated one."""
    topology = {"builder": "switch", "n": max(nranks, 2)}
    if rate_mbit is not None:
        topology.update(bandwidth_bytes_per_s=rate_mbit * 1e6 / 8, latency_s=0.0)
    return topology


def _scenario(nranks: int, programs: list[list[dict]], name: str, topology: dict | None = None):
    return scenario_from_dict({"name": name, "topology": topology or calibration_topology(nranks),
                               "workload": {"kind": "programs", "ranks": programs}}, where=name)


def incast_scenario(nranks: int, senders: int, nbytes: int, topology: dict | None = None):
    """Ranks 1..senders each send ``nbytes`` to rank 0 at once, through rank 0's one link."""
    programs: list[list[dict]] = [[] for _ in range(nranks)]
    for sender in range(1, senders + 1):
        programs[0].append({"kind": "irecv", "peer": sender, "nbytes": nbytes, "handle": f"r{sender}"})
        programs[sender].append({"kind": "send", "peer": 0, "nbytes": nbytes})
    programs[0].append({"kind": "wait", "handles": [f"r{sender}" for sender in range(1, senders + 1)]})
    return _scenario(nranks, programs, f"calibrate-incast-{senders}", topology)


def incast_time_s(records) -> float:
    """Median over repeats of the time from the first send's start until rank 0 has every byte.

    Rank 0's wait ends then; a sender's own send ends earlier, once the
    kernel's buffers hold the rest of its bytes."""
    sends = records[records["kind"] == "send"]
    waits = records[(records["kind"] == "wait") & (records["rank"] == 0)]
    spans = waits.groupby("repeat")["end_s"].max() - sends.groupby("repeat")["start_s"].min()
    return float(spans.median())


def ping_pong_scenario(nranks: int, sizes, partners, round_trips: int = ROUND_TRIPS, topology: dict | None = None):
    programs: list[list[dict]] = [[] for _ in range(nranks)]
    for partner in partners:
        # Untimed trips first: whatever size comes first after the start (or
        # after the other partner) took 1.5-3.5 times the second's time in
        # every trip (8 B: 515 us first, 150 us after 1 KiB; gloo, emulated).
        for nbytes in [sizes[0]] * SETTLING_SIZES + list(sizes):
            for _ in range(round_trips):
                programs[0] += [{"kind": "send", "peer": partner, "nbytes": nbytes},
                                {"kind": "recv", "peer": partner, "nbytes": nbytes}]
                programs[partner] += [{"kind": "recv", "peer": 0, "nbytes": nbytes},
                                      {"kind": "send", "peer": 0, "nbytes": nbytes}]
    return _scenario(nranks, programs, "calibrate-ping-pong", topology)


def compute_scenario(nranks: int, topology: dict | None = None):
    program = [{"kind": "compute", "flops": f} for f in COMPUTE_FLOPS]
    program += [{"kind": "compute", "flops": 0, "nbytes": n, "label": "memory"} for n in MEMORY_NBYTES]
    return _scenario(nranks, [list(program) for _ in range(nranks)], "calibrate-compute", topology)


def collectives_scenario(nranks: int, topology: dict | None = None):
    program = [{"kind": op, "nbytes": n, "algorithm": algorithm}
               for op, algorithm in COLLECTIVES for n in COLLECTIVE_SIZES]
    return _scenario(nranks, [list(program) for _ in range(nranks)], "calibrate-collectives", topology)


def one_way_times(records, partners, sizes, round_trips: int = ROUND_TRIPS,
                  send_only: bool = False) -> dict[int, list[float]]:
    """Median one-way time per size for each partner, from rank 0's send/recv records
    (``send_only``: the median time rank 0's send took instead)."""
    rank0 = records[records["rank"] == 0]
    out: dict[int, list[float]] = {}
    per_partner = (SETTLING_SIZES + len(sizes)) * round_trips * 2
    for k, partner in enumerate(partners):
        times = []
        for s, _ in enumerate(sizes):
            first = k * per_partner + (SETTLING_SIZES + s) * round_trips * 2
            trips = []
            for trip in range(round_trips):
                send_index, recv_index = first + 2 * trip, first + 2 * trip + 1
                send = rank0[rank0["op_index"] == send_index]
                recv = rank0[rank0["op_index"] == recv_index]
                for (_, a), (_, b) in zip(send.iterrows(), recv.iterrows()):
                    trips.append(a["end_s"] - a["start_s"] if send_only else (b["end_s"] - a["start_s"]) / 2)
            times.append(float(np.median(trips)))
        out[partner] = times
    return out


@dataclasses.dataclass
class Measured:
    """The real runs of one calibration: rank 0's results (None on the other ranks of a job)."""

    pings: list  # one ping-pong per launch
    compute: Any
    incast: dict[int, Any]  # senders -> the incast run (emulated network only)
    coll_algorithm: Any = None  # the collectives lowered to point-to-point steps
    coll_native: Any = None  # the library's own collectives


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _fill_defaults(args)
    problem = _problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    emulated = args.network == "emulated"
    topology = calibration_topology(args.nranks, args.rate) if emulated else None
    options = RealOptions(mode="native", warmup=1, repeats=args.repeats, timing="free", timeout_s=args.timeout,
                          network=args.network)
    try:
        executor = get_executor(args.backend, options=options, hostfile=args.hostfile)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Inside a job (mpiexec, srun, torchrun) the job sets the rank count and only rank 0 reports.
    nranks = executor.job_size() or args.nranks
    report = say if executor.job_rank() == 0 else _quiet
    sizes = sorted(set(args.sizes))
    # On the emulated switch every pair of ranks is alike: two shaped links apart.
    partners = [1] if emulated else sorted({1, nranks - 1})
    wall0 = time.perf_counter()
    try:
        measured = measure(args, options, nranks, sizes, partners, topology, say=report)
    except RealRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if measured.pings[0] is None:
        return 0  # not rank 0 of an MPI job
    profile = build_profile(args, nranks, sizes, partners, measured.pings, measured.compute, measured.coll_algorithm,
                            measured.coll_native, topology=topology, incast=measured.incast)
    out = Path(args.out) if args.out else Path("results") / (
        f"profile-{args.backend}{'-emulated' if emulated else ''}.yaml")
    write_profile(profile, out)
    print(describe(profile))
    print(f"\nmeasured in {time.perf_counter() - wall0:.1f} s; wrote {out}")
    return 0


def _fill_defaults(args: argparse.Namespace) -> None:
    """The defaults that depend on the network: an emulated one is slow and needs five ranks."""
    emulated = args.network == "emulated"
    if args.nranks is None:
        args.nranks = EMULATED_NRANKS if emulated else 2
    if args.sizes is None:
        args.sizes = list(EMULATED_SIZES if emulated else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 3 if emulated else 5
    if args.launches is None:
        args.launches = 1 if emulated else 3


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, or None."""
    emulated = args.network == "emulated"
    if emulated and args.hostfile:
        return "--network emulated runs on this machine; it takes no --hostfile"
    low_mbit, high_mbit = MIN_LINK_BITS_PER_S / 1e6, MAX_LINK_BITS_PER_S / 1e6
    if emulated and not low_mbit <= args.rate <= high_mbit:
        return f"--rate must be between {low_mbit:g} and {high_mbit:g} Mbit/s, got {args.rate:g}"
    if args.nranks < 2:
        return "--nranks must be >= 2 (ping-pong needs two ranks)"
    if args.repeats < 1 or args.launches < 1 or any(n < 0 for n in args.sizes) or len(set(args.sizes)) < 2:
        return "--repeats and --launches must be >= 1 and --sizes at least two distinct sizes >= 0"
    if not 0 < args.timeout < float("inf"):
        return f"--timeout must be a finite number of seconds > 0, got {args.timeout}"
    return None


def measure(args: argparse.Namespace, options: RealOptions, nranks: int, sizes: list[int], partners: list[int],
            topology: dict | None, *, say: Callable[[str], None]) -> Measured:
    """Run the calibration's scenarios for real, each with ``options`` changed where it asks;
    ``say`` reports each step as it starts."""
    backend = executor_class(args.backend)

    def run(scenario, **changes):
        return backend(options=dataclasses.replace(options, **changes), hostfile=args.hostfile).run(scenario)

    emulated = topology is not None
    steps = 4 if emulated else 3
    say(f"[1/{steps}] ping-pong rank 0 <-> {', '.join(map(str, partners))}, {len(sizes)} sizes, "
        f"{args.launches} launch(es)")
    # Several launches, the fastest per size: on a shared machine noise only
    # ever slows a run, and a launch can land in a slower state as a whole
    # (seen here: 1 MiB one way in 120 us in some launches, 500 us in others).
    pings = [run(ping_pong_scenario(nranks, sizes, partners, topology=topology)) for _ in range(args.launches)]
    say(f"[2/{steps}] compute speed, all ranks at once")
    measured = Measured(pings, run(compute_scenario(nranks, topology), timing="aligned"), {})
    if emulated:
        senders = [k for k in INCAST_SENDERS if k < nranks]
        say(f"[3/{steps}] incast: {', '.join(map(str, senders))} sender(s) of {INCAST_NBYTES >> 20} MiB "
            "each to rank 0 at once")
        measured.incast = {k: run(incast_scenario(nranks, k, INCAST_NBYTES, topology)) for k in senders}
    if not args.no_collectives:
        say(f"[{steps}/{steps}] {len(COLLECTIVES)} collectives x {len(COLLECTIVE_SIZES)} sizes, "
            "algorithm and native")
        measured.coll_algorithm = run(collectives_scenario(nranks, topology), mode="algorithm", timing="aligned")
        measured.coll_native = run(collectives_scenario(nranks, topology), mode="native", timing="aligned")
    return measured


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _quiet(text: str) -> None:
    pass


def build_profile(args, nranks, sizes, partners, pings, compute, coll_algorithm, coll_native,
                  topology: dict | None = None, incast: dict | None = None):
    hosts = tuple(pings[0].summary.get("rank_hosts", ()))
    per_launch = [one_way_times(ping.records, partners, sizes) for ping in pings]
    per_launch_send = [one_way_times(ping.records, partners, sizes, send_only=True) for ping in pings]
    eager_bytes = send_buffer_bytes = link_burst_bytes = 0
    times = {partner: [min(launch[partner][i] for launch in per_launch) for i in range(len(sizes))]
             for partner in partners}
    classes = {}
    ping_table = []
    emulated = topology is not None
    if emulated:
        # The smallest message is all overhead (8 B take 0.6 us of a 100 Mbit/s
        # link); every size's transfer, beyond it, against the shaped rate.
        rate = topology["bandwidth_bytes_per_s"]
        one_way = times[partners[0]]
        # The overhead from the sizes whose bytes take under a tenth of their time.
        small = [t - n / rate for n, t in zip(sizes, one_way) if n / rate <= 0.1 * t]
        overhead_s = max(float(np.median(small)) if small else one_way[0] - sizes[0] / rate, 0.0)
        # The shaper's bucket (a message on an idle link gains it, one that
        # follows another on the link does not) and one fraction of the rate
        # for every size, from the sizes that are mostly transfer.
        link_burst_bytes, fraction = fit_link_burst(sizes, one_way, overhead_s, rate)
        classes["emulated"] = LinkClass(overhead_s, rate, ((int(sizes[-1]), fraction),))
        # When a send returns: gloo's once its bytes are in the socket's
        # buffer, MPI's at once below its eager limit and on arrival above it.
        send_s = [min(launch[partners[0]][i] for launch in per_launch_send) for i in range(len(sizes))]
        eager_bytes, send_buffer_bytes = fit_send_buffering(sizes, one_way, send_s,
                                                            rate * classes["emulated"].efficiency_at(sizes[-1]))
        ping_table.append({"class": "emulated", "partner": partners[0],
                           "one_way_s": [[n, t] for n, t in zip(sizes, one_way)],
                           "send_s": [[n, t] for n, t in zip(sizes, send_s)]})
    for partner in partners if not emulated else ():
        link_class = "intra_node" if not hosts or hosts[partner] == hosts[0] else "inter_node"
        if link_class in classes:
            continue
        latency_s, bandwidth = fit_hockney(sizes, times[partner])
        curve = efficiency_curve(sizes, times[partner], latency_s, bandwidth)
        classes[link_class] = LinkClass(latency_s, bandwidth, curve)
        ping_table.append({"class": link_class, "partner": partner,
                           "one_way_s": [[n, t] for n, t in zip(sizes, times[partner])]})
    if "intra_node" not in classes and not emulated:
        # Every measured pair crossed hosts (one rank per host): the inter-node
        # figures are the best estimate of a host's own.
        classes["intra_node"] = classes["inter_node"]
    flops_per_s, by_flops, by_nbytes = compute_speeds(compute.records)
    memory_bandwidth = by_nbytes[max(by_nbytes)] if by_nbytes else math.inf
    name = args.name or f"{args.backend}-{hosts[0] if hosts else 'host'}-{nranks}ranks"
    measurements = {"ping_pong": ping_table, "compute_flops_per_s_by_size": by_flops}
    if by_nbytes:
        measurements["memory_bytes_per_s_by_size"] = {str(n): b for n, b in by_nbytes.items()}
    if emulated:
        name = args.name or f"{args.backend}-emulated-{args.rate:g}mbit"
    profile = MachineProfile(name=name, backend=args.backend, flops_per_s=flops_per_s, link_classes=classes,
                             rank_hosts=() if emulated else hosts, measurements=measurements,
                             memory_bandwidth_bytes_per_s=memory_bandwidth,
                             network="emulated" if emulated else "host",
                             eager_bytes=eager_bytes, send_buffer_bytes=send_buffer_bytes,
                             link_burst_bytes=link_burst_bytes)
    if incast:
        measurements["incast"] = incast_table(profile, nranks, topology, incast)
    if coll_algorithm is not None:
        profile = with_collectives(profile, nranks, coll_algorithm, coll_native, topology)
    return profile


def compute_speeds(records) -> tuple[float, dict[str, float], dict[int, float]]:
    """From the compute run's records: the FLOP/s of the largest product (the profile's speed),
    the FLOP/s of each product size, and the bytes per second of each memory move size."""
    frame = records[records["flops"] > 0]
    largest = frame[frame["flops"] == frame["flops"].max()]
    flops_per_s = float(np.median(largest["flops"] / (largest["end_s"] - largest["start_s"])))
    moves = records[(records["flops"] == 0) & (records["nbytes"] > 0)]
    by_nbytes = {int(n): float(np.median(g["nbytes"] / (g["end_s"] - g["start_s"])))
                 for n, g in moves.groupby("nbytes")}
    by_flops = {str(int(f)): float(np.median(g["flops"] / (g["end_s"] - g["start_s"])))
                for f, g in frame.groupby("flops")}
    return flops_per_s, by_flops, by_nbytes


def with_collectives(profile, nranks: int, coll_algorithm, coll_native, topology: dict | None):
    """``profile`` with the collectives measured: their table, the time to reduce a byte, and
    the library's own collectives' efficiency."""
    if topology is not None and math.isfinite(profile.memory_bandwidth_bytes_per_s):
        # A reduction adds two buffers into one on this machine's memory.  Fitted
        # from the collectives instead, it takes up whatever else the shaped links
        # add (MPI: 16.7 ns per byte, which made a 16 MiB binomial reduce 39% slow
        # on an 8-rank tree; a numpy add of 16 MiB takes a few ms).
        gamma = REDUCE_BYTES_MOVED / profile.memory_bandwidth_bytes_per_s
    else:
        gamma = fit_reduce_cost(profile, nranks, coll_algorithm, topology)
    measurements = {**profile.measurements, "collectives": collective_table(coll_algorithm, "algorithm")
                    + collective_table(coll_native, "native")}
    profile = dataclasses.replace(profile, reduce_s_per_byte=gamma, measurements=measurements)
    return dataclasses.replace(profile, collective_efficiency=fit_native_collectives(profile, nranks,
                                                                                     coll_native, topology))


def incast_table(profile, nranks: int, topology: dict, incast: dict) -> list[dict]:
    """Per number of senders: the measured time, the aggregate fraction of the shaped rate it
    reached, and the time the simulator predicts with ``profile`` (max-min sharing of rank 0's link)."""
    rate = topology["bandwidth_bytes_per_s"]
    rows = []
    for senders, result in sorted(incast.items()):
        measured_s = incast_time_s(result.records)
        scenario = with_profile(incast_scenario(nranks, senders, INCAST_NBYTES, topology), profile)
        predicted_s = float(get_executor("sim").run(scenario).makespan_s)
        rows.append({"senders": senders, "nbytes": INCAST_NBYTES, "measured_s": measured_s,
                     "aggregate_fraction": senders * INCAST_NBYTES / rate / measured_s,
                     "predicted_s": predicted_s})
    return rows


def collective_table(result, mode: str) -> list[dict]:
    # Several ops of one (kind, algorithm, size): the median of their times.
    table = result.op_times().groupby(["kind", "algorithm", "nbytes"])["time_s"].median().reset_index()
    return [{"op": r.kind, "algorithm": r.algorithm, "mode": mode, "nbytes": int(r.nbytes),
             "measured_s": float(r.time_s)} for r in table.itertuples()]


def fit_reduce_cost(profile, nranks: int, measured, topology: dict | None = None) -> float:
    """The reduction cost that makes the simulated collectives match the algorithm-mode measurements."""
    return fit_reduce_cost_through_simulator(with_profile(collectives_scenario(nranks, topology), profile),
                                             measured.op_time_s())


def fit_native_collectives(profile, nranks: int, measured, topology: dict | None = None):
    """Corrections for the library's own collectives, fitted against each op's default algorithm."""
    real = measured.op_time_s()
    scenario = with_profile(collectives_scenario(nranks, topology), profile)
    program = scenario.programs()[0]
    # The library picks its own algorithm; the correction is relative to the
    # one the simulator runs when a scenario names none.
    chosen = {i: t for i, t in real.items() if program[i].algorithm == DEFAULT_ALGORITHM[program[i].op]}
    return fit_collective_efficiency(scenario, chosen)


def describe(profile) -> str:
    lines = [f"profile {profile.name} ({profile.backend})",
             f"  compute        {profile.flops_per_s / 1e9:.3g} GFLOP/s per rank (all ranks busy)"]
    if math.isfinite(profile.memory_bandwidth_bytes_per_s):
        lines.append(f"  memory         {profile.memory_bandwidth_bytes_per_s / 1e9:.3g} GB/s moved per rank "
                     "(read and write, all ranks busy)")
    for name, c in profile.link_classes.items():
        if name == "emulated":
            text = ", ".join(f"{n} B: {e:.3f}" for n, e in c.efficiency)
            lines.append(f"  emulated       overhead {c.latency_s * 1e6:.3g} us per message; fraction of the "
                         f"{c.bandwidth_bytes_per_s * 8 / 1e6:g} Mbit/s shaped rate reached: {text}")
            continue
        curve = f", efficiency curve at {len(c.efficiency)} sizes" if c.efficiency else ""
        lines.append(f"  {name:<14} latency {c.latency_s * 1e6:.3g} us, bandwidth "
                     f"{c.bandwidth_bytes_per_s / 1e9:.3g} GB/s{curve}")
    if profile.eager_bytes or profile.send_buffer_bytes:
        lines.append(f"  sends          return at once up to {profile.eager_bytes} B, else with "
                     f"{profile.send_buffer_bytes} B still to arrive")
    if profile.link_burst_bytes:
        lines.append(f"  links          let {profile.link_burst_bytes} B through at once when idle (the shaper's bucket)")
    lines.append(f"  reduction      {profile.reduce_s_per_byte * 1e9:.3g} ns per byte")
    for op, points in profile.collective_efficiency.items():
        text = ", ".join(f"{n} B: {e:.2f}" for n, e in points)
        lines.append(f"  native {op:<14} efficiency {text}")
    for row in profile.measurements.get("incast", []):
        lines.append(f"  incast {row['senders']} sender(s) x {row['nbytes'] >> 20} MiB: measured "
                     f"{row['measured_s']:.4f} s ({row['aggregate_fraction']:.1%} of the shaped rate), "
                     f"predicted {row['predicted_s']:.4f} s")
    for entry in profile.measurements.get("ping_pong", []):
        c = profile.link_classes[entry["class"]]
        lines.append(f"  ping-pong rank 0 <-> {entry['partner']} ({entry['class']}): size, measured, fitted")
        # On an emulated link a message on an idle path gains the bucket (simcore.network).
        gain_s = profile.link_burst_bytes / c.bandwidth_bytes_per_s if entry["class"] == "emulated" else 0.0
        for n, t in entry["one_way_s"]:
            fitted_s = c.latency_s + max(c.time_s(n) - c.latency_s - gain_s, 0.0)
            lines.append(f"    {n:>10} B  {t * 1e6:10.2f} us  {fitted_s * 1e6:10.2f} us")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
