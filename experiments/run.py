"""Run one scenario file and write its records.

    python -m experiments.run experiments/scenarios/ring8_allreduce.yaml
    python -m experiments.run SCENARIO.yaml --backend sim --out results/mine --seed 3
    python -m experiments.run SCENARIO.yaml --backend mpi            # launches mpiexec itself
    mpiexec -n 8 python -m experiments.run SCENARIO.yaml --backend mpi
    python -m experiments.run SCENARIO.yaml --backend torch          # launches torchrun itself

Prints the summary (and for a transformer workload its step: time, tokens/s,
MFU, HFU, pipeline bubble, exposed communication by group kind, also written
to summary.json under "training") and a per-kind table (operation kind, count, mean
duration, per group where the scenario names groups), and writes records.csv,
per_rank.csv, per_link.csv, per_node.csv, per_group.csv (each rank's exposed
communication per process group), summary.json and trace.json into ``--out`` (default ``results/run-<scenario name>/``).
``--records`` and ``--trace`` choose the records' form (csv, parquet, none)
and the trace's detail (full, summary, none); by default a run of more than
a million operations leaves the records out and one of more than 200,000
merges the trace, and says how to get them whole.
Exit codes: 0 done, 1 the run failed (a deadlock, a time or energy that is not
finite, or a real rank that died or hung; what was computed is still written),
2 a bad scenario file or option (an --out that cannot be written is found
before anything runs).  ``--max-memory BYTES`` raises the limit on a
scenario's estimated memory (default ``$DISTSIM_MAX_MEMORY_BYTES`` or 2 GiB).
"""
from __future__ import annotations

import argparse
import math
import dataclasses
import sys
import time
from pathlib import Path

from executors import backends
from executors.real import RealRunError
from experiments import common
from experiments.common import add_max_memory_option, add_real_options, format_table, make_executor, safe_name
from experiments.output import (AUTO_RECORDS_ROWS, AUTO_TRACE_ROWS, RECORDS_CHOICES, TRACE_CHOICES,
                                output_choices, parquet_problem, write_result)
from simcore.engine import SimulationError
from simcore.result import group_label
from workloads.transformer import format_training_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.run",
                                description="Run one scenario file and write its records and summary.")
    p.add_argument("scenario", help="scenario file (YAML or JSON)")
    p.add_argument("--backend", default="sim", choices=backends(), help="executor (default sim)")
    p.add_argument("--out", help="results folder (default results/run-<scenario name>)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--records", choices=RECORDS_CHOICES, default="auto",
                   help=f"per-operation records: csv, parquet (needs pyarrow: pip install -e '.[parquet]') or none; "
                        f"auto (default): csv up to {AUTO_RECORDS_ROWS:,} operations, else none")
    p.add_argument("--trace", choices=TRACE_CHOICES, default="auto",
                   help=f"trace.json for ui.perfetto.dev: full (every operation), summary (each rank's consecutive "
                        f"operations of one kind as one slice) or none; auto (default): full up to "
                        f"{AUTO_TRACE_ROWS:,} operations, else summary")
    add_max_memory_option(p)
    add_real_options(p)
    return p


def peak_flops_per_s(topology, precision: str) -> list[float]:
    """Each rank's peak FLOP/s in ``precision``, where the topology knows it, else its one speed."""
    peak = getattr(topology, "peak_flops_per_s", None)
    if callable(peak):
        return [float(peak(rank, precision)) for rank in range(topology.nranks)]
    return [float(f) for f in topology.rank_flops_per_s]


def training_summary(scenario, result):
    """The step report of a workload that has one (``transformer``), or None."""
    report = getattr(scenario.workload, "training_report", None)
    if report is None or result.makespan_s <= 0:
        return None
    capacities = getattr(scenario.topology, "rank_memory_bytes", None) or [math.inf]
    # A folded run's records are its representatives' (result.rep_of): the computes come from per_rank.
    compute = result.per_rank["compute_s"].tolist() if result.rep_of is not None else None
    return report(scenario.nranks, result.makespan_s, result.records, result.per_group,
                  peak_flops_per_s(scenario.topology, scenario.workload.precision), min(capacities),
                  compute_s_by_rank=compute)


def kind_table(records) -> str:
    """Operation kind (and group, where any is named), count, mean duration and bytes, from a records DataFrame."""
    if records is None or not len(records):
        return "(no operations)"
    groups = records["group"].fillna("").astype(str) if "group" in records.columns else ""
    frame = records.assign(duration_s=records["end_s"] - records["start_s"], group=groups)
    by_group = bool((frame["group"] != "").any())
    rows = []
    for (group, kind), part in frame.groupby(["group", "kind"], sort=True):
        rows.append({"group": group_label(group) if kind != "compute" else "", "kind": kind, "count": len(part),
                     "mean_s": float(part["duration_s"].mean()), "total_bytes": int(part["nbytes"].sum())})
    columns = (("kind", "kind", ""), ("count", "count", "d"), ("mean_s", "mean duration s", ".4g"),
               ("total_bytes", "bytes", "d"))
    return format_table(rows, ((("group", "group", ""),) if by_group else ()) + columns)


class _ProgressPrinter:
    """Prints the simulated time reached, at most every ``every_s`` seconds of wall time."""

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, simulated_s: float, events: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(f"  ... simulated {simulated_s:.6g} s, {events:,} events, {now - self.started:.0f} s wall",
                  file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed is not None and args.seed < 0:
        print(f"error: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    if args.records == "parquet" and parquet_problem():
        print(f"error: {parquet_problem()}", file=sys.stderr)
        return 2
    # The default folder depends on the scenario's name: checked once that is known.
    max_memory_bytes = common.start_or_report(args, args.out)
    if max_memory_bytes is None:
        return 2
    scenario = common.load_scenario_or_report(args.scenario, max_memory_bytes=max_memory_bytes)
    if scenario is None:
        return 2
    if args.seed is not None:
        scenario = dataclasses.replace(scenario, seed=args.seed)
    try:
        # The ranks of a real run (mpiexec, torchrun) load the scenario again, under the same limit.
        executor = make_executor(args.backend, args, progress=_ProgressPrinter(), max_memory_bytes=max_memory_bytes)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / f"run-{safe_name(scenario.name)}"
    problem = None if args.out else common.out_dir_problem(out)
    if problem:
        print(f"error: {problem} (the default for this scenario; pass --out)", file=sys.stderr)
        return 2

    try:
        result = executor.run(scenario)
    except SimulationError as exc:
        print(f"error: {args.scenario}: {exc}", file=sys.stderr)
        if exc.partial is not None:
            records, trace, _ = output_choices(len(exc.partial.records), args.records, args.trace)
            write_result(exc.partial, out, records, trace, say=_say)
            print(f"wrote what was computed before the failure to {out}/")
        return 1
    except RealRunError as exc:
        print(f"error: {args.scenario}: {exc}", file=sys.stderr)
        return 1
    if result is None:
        return 0  # a rank other than 0 of an MPI job: rank 0 reports

    print(result.format_summary())
    training = training_summary(scenario, result)
    if training is not None:
        # The transformer's step: MFU, bubble and exposed communication by
        # kind, in summary.json under "training" too.
        result.summary["training"] = training
        print(format_training_report(training))
    print()
    print(kind_table(result.records))
    records, trace, notes = output_choices(len(result.records), args.records, args.trace)
    written = write_result(result, out, records, trace, say=_say)
    print()
    print(f"wrote {', '.join(p.name for p in written)} to {out}/")
    for note in notes:
        print(note)
    return 0


def _say(line: str) -> None:
    print(f"  ... {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
