"""Prediction against an emulated network: the simulator, calibrated once, on topologies it was not fitted on.

    python -m experiments.calibrate --backend torch --network emulated --out results/profile-emulated.yaml
    python benchmarks/emulated_accuracy.py --backend torch --profile results/profile-emulated.yaml

Each case builds a topology as an emulated network on this machine (a
namespace per node, shaped veth links, the simulator's routes; needs root),
runs its operations there for real, simulates the same scenario with the
emulated profile, and compares them per operation as ``experiments.validate``
does (an operation's time is its slowest rank's; measured is the median over
repeats).  Then it prints, per case and over all, the median and 90th
percentile of |error| over the operations that move 1 MiB or more (sends
left out: see LOCAL_COMPLETION), and
writes every row to ``--out``/accuracy.csv.

Cases (link rates from 100 Mbit/s to 1 Gbit/s):

- ``ring8``: 8 ranks on a ring of 100 Mbit/s links; the collectives;
- ``incast8``: a switch of 8 at 100 Mbit/s; ranks 1..7 send to rank 0 at once;
- ``tree8``: a two-level tree, 4 ranks per leaf switch on 400 Mbit/s links,
  each leaf's uplink 100 Mbit/s (16:1 oversubscribed); the collectives;
- ``hier8``: 2 servers of 4 ranks, 400 Mbit/s inside a server, 100 Mbit/s
  between servers (1 Gbit/s inside is more than 2 cores move for 8 ranks);
  the collectives, and an all-reduce on each server's group and on each
  group across the servers (the groups of a data-parallel layout);
- ``edge``: 4 devices on 100 Mbit/s Wi-Fi to 2 edge servers, a 100 Mbit/s WAN
  to a gateway and a 1 Gbit/s LAN to 2 cloud nodes; broadcast and reduce
  from a cloud node, allgather;
- ``dp8``: one data-parallel training step (``DP_STEP``: 16 MiB of
  gradients in 4 MiB buckets, all-reduced while backward computes) on
  tree8's topology; its step time counts as one operation.

The collectives are every one with a size (``COLLECTIVES``), each at 1, 16
and 64 MiB by default (``--sizes``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

MIB = 1 << 20
MBIT = 1e6 / 8  # bytes per second in one Mbit/s
# Every collective that moves a size of its own (alltoallv takes per-rank
# counts, a barrier none), with its default algorithm.
COLLECTIVES = (("allreduce", "ring"), ("allgather", "ring"), ("reduce_scatter", "ring"),
               ("broadcast", "binomial"), ("alltoall", "pairwise"), ("reduce", "binomial"),
               ("scatter", "binomial"), ("gather", "binomial"))
CASES = ("ring8", "incast8", "tree8", "hier8", "edge", "dp8")
DEFAULT_SIZES = (1 * MIB, 16 * MIB, 64 * MIB)
# The data-parallel step: 16 MiB of gradients in 4 MiB buckets, each
# all-reduced while backward computes the next (DDP's overlap).
DP_STEP = {"kind": "data_parallel", "parameters": 4 << 20, "bytes_per_parameter": 4, "bucket_bytes": 4 * MIB,
           "batch_per_rank": 1, "flops_per_sample": 3e9, "steps": 1}
MIN_NBYTES = 1 * MIB


def collectives(sizes, ops=COLLECTIVES, group: str = "") -> list[dict]:
    program = []
    for op, algorithm in ops:
        for nbytes in sizes:
            entry = {"kind": op, "nbytes": nbytes, "algorithm": algorithm}
            if group:
                entry["group"] = group
            program.append(entry)
    return program


def scenario_dict(case: str, sizes) -> dict:
    """The case's scenario: its topology and every rank's program."""
    if case == "ring8":
        topology = {"builder": "ring", "n": 8, "bandwidth_bytes_per_s": 100 * MBIT, "latency_s": 0}
        programs = [collectives(sizes) for _ in range(8)]
        groups = None
    elif case == "incast8":
        topology = {"builder": "switch", "n": 8, "bandwidth_bytes_per_s": 100 * MBIT, "latency_s": 0}
        programs = [[] for _ in range(8)]
        for nbytes in sizes:
            for sender in range(1, 8):
                programs[0].append({"kind": "irecv", "peer": sender, "nbytes": nbytes, "handle": f"r{sender}-{nbytes}"})
                programs[sender].append({"kind": "send", "peer": 0, "nbytes": nbytes})
            programs[0].append({"kind": "wait", "handles": [f"r{s}-{nbytes}" for s in range(1, 8)]})
        groups = None
    elif case == "tree8":
        topology = {"builder": "tree", "n": 8, "arity": 4, "bandwidth_bytes_per_s": 400 * MBIT,
                    "uplink_bandwidth_bytes_per_s": 100 * MBIT, "latency_s": 0}
        programs = [collectives(sizes) for _ in range(8)]
        groups = None
    elif case == "hier8":
        topology = {"builder": "hierarchical", "levels": [2, 4],
                    "bandwidths_bytes_per_s": [400 * MBIT, 100 * MBIT], "latencies_s": [0, 0]}
        groups = {"server": [[0, 1, 2, 3], [4, 5, 6, 7]], "across": [[0, 4], [1, 5], [2, 6], [3, 7]]}
        programs = [collectives(sizes)
                    + collectives(sizes, (("allreduce", "ring"),), group="server")
                    + collectives(sizes, (("allreduce", "ring"),), group="across") for _ in range(8)]
    elif case == "dp8":
        topology = {"builder": "tree", "n": 8, "arity": 4, "bandwidth_bytes_per_s": 400 * MBIT,
                    "uplink_bandwidth_bytes_per_s": 100 * MBIT, "latency_s": 0}
        data = {"name": f"emulated-{case}", "seed": 0, "topology": topology, "workload": dict(DP_STEP)}
        return data
    elif case == "edge":
        topology = {"builder": "edge_cloud", "n_devices": 4, "n_edge": 2, "n_cloud": 2,
                    "wireless_bandwidth_bytes_per_s": 100 * MBIT, "wireless_latency_s": 0,
                    "wan_bandwidth_bytes_per_s": 100 * MBIT, "wan_latency_s": 0,
                    "lan_bandwidth_bytes_per_s": 1000 * MBIT, "lan_latency_s": 0}
        # Ranks: devices 0-3, edge servers 4-5, cloud nodes 6-7.
        programs = [[{"kind": op, "nbytes": n, "algorithm": "binomial", "root": 6} for op in ("broadcast", "reduce")
                     for n in sizes] + collectives(sizes, (("allgather", "ring"),)) for _ in range(8)]
        groups = None
    else:
        raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")
    data = {"name": f"emulated-{case}", "seed": 0, "topology": topology,
            "workload": {"kind": "programs", "ranks": programs}}
    if groups:
        data["groups"] = groups
    return data


def run_case(case: str, sizes, backend: str, profile, repeats: int, mode: str, timeout_s: float,
             measured: pd.DataFrame | None = None) -> pd.DataFrame:
    """The case's table: run for real and simulated, or, given the rows a run ``measured``
    (its accuracy.csv), only simulated again against them."""
    from executors import get_executor
    from executors.real import RealOptions, choose_timing
    from experiments.validate import repredicted, validation_table
    from workloads.scenario import scenario_from_dict, with_profile

    scenario = scenario_from_dict(scenario_dict(case, sizes), where=case)
    timing = choose_timing(scenario.programs(), "auto", scenario.groups)
    sim = get_executor("sim", aligned=timing == "aligned", native_collectives=mode == "native").run(
        with_profile(scenario, profile))
    if measured is not None:
        table = repredicted(measured.drop(columns=["case", "timing"]), sim.records, scenario.nranks, scenario.groups)
    else:
        options = RealOptions(mode=mode, warmup=1, repeats=repeats, timing=timing, timeout_s=timeout_s,
                              network="emulated")
        real = get_executor(backend, options=options).run(scenario)
        table = validation_table(sim.records, real.records, scenario.nranks, scenario.groups)
    table.insert(0, "case", case)
    table["timing"] = timing
    return table


def measured_sizes(rows: pd.DataFrame) -> list[int]:
    """The sizes a run of a case used (``--sizes``), read back from its rows."""
    return sorted({int(n) for n in rows.loc[rows["kind"] != "total", "nbytes"] if n > 0})


# A send ends, in gloo and MPI, once its bytes are in the kernel's buffers
# (several MiB over TCP), not when they arrive as the simulator has it: its
# transfer is measured by the receive that matches it, and sends are left
# out of the statistics (they stay in accuracy.csv).
LOCAL_COMPLETION = ("send", "isend")
# Cases whose whole run is one step: its time (the total row) counts as an operation.
STEP_CASES = ("dp8",)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    step = (table["kind"] == "total") & table["case"].isin(STEP_CASES)
    ops = table[step | ((table["kind"] != "total") & (table["nbytes"] >= MIN_NBYTES)
                        & ~table["kind"].isin(LOCAL_COMPLETION))].dropna(subset=["error_pct"])
    rows = []
    for case, part in list(ops.groupby("case", sort=False)) + [("all", ops)]:
        errors = part["error_pct"].abs().to_numpy()
        rows.append({"case": case, "operations": len(errors),
                     "median_abs_error_pct": float(np.median(errors)) if len(errors) else float("nan"),
                     "p90_abs_error_pct": float(np.percentile(errors, 90)) if len(errors) else float("nan"),
                     "max_abs_error_pct": float(errors.max()) if len(errors) else float("nan")})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=("torch", "mpi"))
    parser.add_argument("--profile", required=True, help="an emulated profile (calibrate --network emulated)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), metavar="BYTES")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="algorithm", choices=("algorithm", "native"),
                        help="algorithm (default): the scenario's own algorithm, step by step; native: the library's")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default="results/emulated-accuracy")
    parser.add_argument("--measured", metavar="CSV",
                        help="an earlier run's accuracy.csv: simulate its cases again (with --profile and this "
                             "version of the model) against its measurements, without running anything; its "
                             "sizes are read from it")
    args = parser.parse_args(argv)
    from topologies.profile import load_profile

    profile = load_profile(args.profile)
    if profile.network != "emulated":
        print(f"error: {args.profile} is a profile of a machine, not of an emulated network "
              "(python -m experiments.calibrate --network emulated)", file=sys.stderr)
        return 2
    measured = None
    if args.measured:
        try:
            measured = pd.read_csv(args.measured)
        except (OSError, ValueError) as exc:
            print(f"error: --measured {args.measured}: {exc}", file=sys.stderr)
            return 2
        missing = {"case", "timing", "kind", "nbytes", "measured_s"} - set(measured.columns)
        if missing:
            print(f"error: --measured {args.measured}: not an accuracy.csv (no {', '.join(sorted(missing))} column)",
                  file=sys.stderr)
            return 2
        args.cases = [case for case in args.cases if case in set(measured["case"])]
    tables = []
    for case in args.cases:
        start = time.perf_counter()
        rows = None if measured is None else measured[measured["case"] == case]
        sizes = args.sizes if rows is None else measured_sizes(rows)
        table = run_case(case, sizes, args.backend, profile, args.repeats, args.mode, args.timeout, rows)
        tables.append(table)
        rows = table[table["kind"] != "total"]
        print(f"{case}: {len(rows)} operations in {time.perf_counter() - start:.0f} s", flush=True)
        for row in rows.itertuples():
            print(f"  {row.kind:<15} {row.group or 'world':<7} {row.nbytes:>10} B  predicted {row.predicted_s:8.4f} s"
                  f"  measured {row.measured_s:8.4f} s  error {row.error_pct:+6.1f} %", flush=True)
    table = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "accuracy.csv", index=False)
    summary = summarize(table)
    summary.to_csv(out / "summary.csv", index=False)
    print()
    print(f"operations of {MIN_NBYTES >> 20} MiB or more ({args.backend}, {args.mode}, profile {profile.name}):")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"wrote accuracy.csv and summary.csv to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
