"""Check the simulator against reality: predicted and measured, side by side.

    python -m experiments.validate experiments/scenarios/ring8_allreduce.yaml --backend mpi
    python -m experiments.validate SCENARIO.yaml --backend mpi --repeats 20 --out results/mine
    mpiexec -n 8 python -m experiments.validate SCENARIO.yaml --backend mpi
    python -m experiments.validate SCENARIO.yaml --backend torch        # launches torchrun itself

The scenario is simulated first (a scenario the simulator rejects never
starts a process), then run for real, and the two sets of records are
compared per group, operation kind and size: rows are keyed by (group, kind,
algorithm, nbytes, flops), so collectives and messages group by the process
group they ran on (a tensor-parallel and a data-parallel all-reduce of one
size are two rows) and by size, and compute by FLOPs and bytes
(a memory-bound term, with no FLOPs, by its bytes).

Statistics (the same for the prediction and the measurement):

- an operation is one ``op_index`` of the ranks' programs; its time is the
  longest of the ranks' durations (end_s - start_s) for it.  With aligned
  timing every operation starts after a barrier, so this is the time the
  slowest rank spends in it, which is what the simulator predicts for a
  collective all ranks enter together;
- a row's time in one run (one repeat) is the median over its operations;
- predicted_s is that time in the simulation (it is deterministic: one run);
  measured_s is the median over the timed repeats, measured_min_s and
  measured_max_s the smallest and largest repeat;
- error_pct = (predicted_s - measured_s) / measured_s * 100: positive when
  the simulator predicts too slow, negative when it predicts too fast;
- algbw and busbw as nccl-tests define them: algbw = nbytes / time (GB/s,
  1e9 bytes), busbw = algbw * 2(n-1)/n for allreduce, (n-1)/n for allgather,
  reduce_scatter and alltoall, 1 for broadcast, reduce, send and recv
  (``nbytes`` is the whole vector, as in ``workloads.ops.Collective``),
  with n the size of the row's group (NaN busbw where the groups of one
  name differ in size);
- the total row compares makespans: the largest end_s of the simulation
  against the median over repeats of each repeat's largest end_s (aligned
  timing includes the barriers between operations).

Writes validation.csv, validation.png (predicted against measured, log-log,
with y = x), sim_records.csv, real_records.csv and summary.json into
``--out`` (default ``results/validate-<scenario name>-<backend>/``).  Inside
an MPI or torchrun job only rank 0 simulates, prints and writes.
Exit codes: 0 done, 1 the real run failed, 2 a bad scenario or option.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from executors import backends, executor_class, get_executor
from executors.real import RealRunError, aligned_problem, choose_timing
from experiments import common
from experiments.output import make_out_dir, write_json
from simcore.engine import SimulationError
from simcore.result import OP_KEYS, op_times_per_repeat
from topologies.profile import load_profile
from workloads.collectives import SEMANTICS
from workloads.groups import WORLD, ProcessGroups
from workloads.scenario import with_profile

GROUP_KEYS = OP_KEYS
TABLE_COLUMNS = [
    "kind", "group", "algorithm", "nbytes", "flops", "count", "predicted_s", "measured_s", "measured_min_s",
    "measured_max_s", "error_pct", "algbw_GBps", "busbw_GBps", "predicted_algbw_GBps", "predicted_busbw_GBps",
]
STATISTIC = ("operation time = max over ranks of (end_s - start_s) for one op_index; row time = median over "
             "the row's operations; measured = median over repeats (min/max over repeats as spread); "
             "total = makespan (largest end_s), median over repeats")
ERROR_SIGN = "error_pct = (predicted - measured) / measured * 100; > 0: the simulator predicts too slow"

# nccl-tests' bus bandwidth factors (doc/PERFORMANCE.md), as functions of n ranks: the
# collectives' from their semantics table; a message moves its bytes once.
_BUSBW_FACTOR = {op: s.busbw_factor for op, s in SEMANTICS.items() if s.busbw_factor is not None}
_BUSBW_FACTOR.update({kind: (lambda n: 1.0) for kind in ("send", "recv", "isend", "irecv")})


# -- the table (pure functions: records in, numbers out) ---------------------------


def busbw_factor(kind: str, nranks: int) -> float:
    """busbw / algbw for ``kind`` on ``nranks`` ranks; NaN where bandwidth means nothing (compute, barrier)."""
    factor = _BUSBW_FACTOR.get(kind)
    return float(factor(nranks)) if factor is not None and nranks >= 1 else math.nan


def bandwidths_GBps(kind: str, nbytes: int, time_s: float, nranks: int) -> tuple[float, float]:  # noqa: N802
    """(algbw, busbw) in GB/s (1e9 bytes/s) for ``nbytes`` moved in ``time_s``."""
    if not nbytes or not (time_s > 0) or kind not in _BUSBW_FACTOR:
        return math.nan, math.nan
    algbw = nbytes / time_s / 1e9
    return algbw, algbw * busbw_factor(kind, nranks)


def group_size(groups: ProcessGroups | None, name: str, nranks: int) -> float:
    """The number of ranks of a group of ``name`` (the world: ``nranks``); NaN where its groups differ in size
    or the name is not one of ``groups``."""
    if name == WORLD or groups is None:
        return nranks
    if name not in groups.names:
        return math.nan
    sizes = {len(members) for members in groups.family(name)}
    return sizes.pop() if len(sizes) == 1 else math.nan


def row_times(records: pd.DataFrame) -> pd.DataFrame:
    """Per repeat and row (group, kind, algorithm, nbytes, flops): ``time_s`` and ``count`` (see the module
    docstring)."""
    per_op = op_times_per_repeat(records)
    columns = ["repeat"] + GROUP_KEYS + ["time_s", "count"]
    if not len(per_op):
        return pd.DataFrame(columns=columns)
    rows = per_op.groupby(["repeat"] + GROUP_KEYS, sort=True)["time_s"].agg(["median", "size"])
    return rows.rename(columns={"median": "time_s", "size": "count"}).reset_index()[columns]


def makespans(records: pd.DataFrame) -> pd.Series:
    """The largest end_s of each repeat."""
    frame = records if "repeat" in records.columns else records.assign(repeat=0)
    return frame.groupby("repeat")["end_s"].max()


def error_pct(predicted_s: float, measured_s: float) -> float:
    if not (measured_s > 0) or not math.isfinite(predicted_s):
        return math.nan
    return (predicted_s - measured_s) / measured_s * 100.0


def validation_table(sim_records: pd.DataFrame, real_records: pd.DataFrame, nranks: int,
                     groups: ProcessGroups | None = None) -> pd.DataFrame:
    """Predicted against measured per (group, kind, algorithm, nbytes, flops), plus a ``total`` row (makespan).

    ``sim_records``: the simulator's records (one run); ``real_records``: a
    real executor's, with a ``repeat`` column.  Columns: ``TABLE_COLUMNS``.
    A row that only one side has keeps NaN on the other.  ``groups``: the
    scenario's process groups, whose sizes set busbw (the world only if None).
    """
    sim = row_times(sim_records)
    sim = sim[sim["repeat"] == sim["repeat"].min()] if len(sim) else sim
    predicted = sim.set_index(GROUP_KEYS)[["time_s", "count"]].rename(columns={"time_s": "predicted_s"})
    real = row_times(real_records)
    measured = real.groupby(GROUP_KEYS, sort=True).agg(
        measured_s=("time_s", "median"), measured_min_s=("time_s", "min"), measured_max_s=("time_s", "max"),
        real_count=("count", "first"),
    )
    table = predicted.join(measured, how="outer").reset_index()
    table["count"] = table["count"].fillna(table["real_count"]).astype("int64")
    rows: list[dict[str, Any]] = []
    for row in table.to_dict("records"):
        row = {key: row[key] for key in GROUP_KEYS + ["count", "predicted_s", "measured_s",
                                                      "measured_min_s", "measured_max_s"]}
        row["error_pct"] = error_pct(row["predicted_s"], row["measured_s"])
        # busbw counts the ranks the operation ran among: its group's.
        n = group_size(groups, row["group"], nranks)
        row["algbw_GBps"], row["busbw_GBps"] = bandwidths_GBps(row["kind"], row["nbytes"], row["measured_s"], n)
        row["predicted_algbw_GBps"], row["predicted_busbw_GBps"] = bandwidths_GBps(
            row["kind"], row["nbytes"], row["predicted_s"], n)
        rows.append(row)

    sim_span = makespans(sim_records)
    real_span = makespans(real_records)
    predicted_total = float(sim_span.iloc[0]) if len(sim_span) else math.nan
    measured_total = float(real_span.median()) if len(real_span) else math.nan
    rows.append({
        "kind": "total", "group": "", "algorithm": "", "nbytes": 0, "flops": 0.0,
        "count": int(sum(r["count"] for r in rows)),
        "predicted_s": predicted_total, "measured_s": measured_total,
        "measured_min_s": float(real_span.min()) if len(real_span) else math.nan,
        "measured_max_s": float(real_span.max()) if len(real_span) else math.nan,
        "error_pct": error_pct(predicted_total, measured_total),
        "algbw_GBps": math.nan, "busbw_GBps": math.nan,
        "predicted_algbw_GBps": math.nan, "predicted_busbw_GBps": math.nan,
    })
    out = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    out["nbytes"] = out["nbytes"].astype("int64")
    out["count"] = out["count"].astype("int64")
    return out


def repredicted(table: pd.DataFrame, sim_records: pd.DataFrame, nranks: int,
                groups: ProcessGroups | None = None) -> pd.DataFrame:
    """``table`` (a ``validation_table``, as written and read back) with its predictions
    taken from ``sim_records`` and its errors recomputed; the measurements stay."""
    sim = row_times(sim_records)
    sim = sim[sim["repeat"] == sim["repeat"].min()] if len(sim) else sim
    predicted = {tuple(key): t for key, t in zip(sim[GROUP_KEYS].itertuples(index=False), sim["time_s"])}
    out = table.copy()
    for column in ("group", "algorithm"):
        out[column] = [value if isinstance(value, str) else "" for value in out[column]]  # a CSV reads "" as NaN
    out["nbytes"] = out["nbytes"].astype("int64")
    out["flops"] = out["flops"].astype(float)
    span = makespans(sim_records)
    for i, row in out.iterrows():
        if row["kind"] == "total":
            predicted_s = float(span.iloc[0]) if len(span) else math.nan
        else:
            predicted_s = predicted.get(tuple(row[GROUP_KEYS]), math.nan)
            n = group_size(groups, row["group"], nranks)
            out.loc[i, ["predicted_algbw_GBps", "predicted_busbw_GBps"]] = bandwidths_GBps(
                row["kind"], row["nbytes"], predicted_s, n)
        out.loc[i, "predicted_s"] = predicted_s
        out.loc[i, "error_pct"] = error_pct(predicted_s, row["measured_s"])
    return out


def median_abs_error_pct(table: pd.DataFrame) -> float:
    """Median of |error_pct| over the operation rows (the total row left out)."""
    errors = table.loc[table["kind"] != "total", "error_pct"].abs().dropna()
    return float(errors.median()) if len(errors) else math.nan


def compute_size(flops: float, nbytes: int) -> str:
    """A compute row's size: its FLOPs, and its bytes where it has any (rows of one FLOP count and
    different bytes are different rows; a memory-bound term has bytes alone)."""
    if not nbytes:
        return f"{flops:.4g} flop"
    return f"{int(nbytes)} B" if not flops else f"{flops:.4g} flop, {int(nbytes)} B"


def format_validation(table: pd.DataFrame) -> str:
    rows = []
    for row in table.to_dict("records"):
        size = compute_size(row["flops"], row["nbytes"]) if row["kind"] == "compute" else (
            "" if row["kind"] == "total" else f"{int(row['nbytes'])} B")
        spread = "-" if not math.isfinite(row["measured_min_s"]) else (
            f"{row['measured_min_s']:.4g}-{row['measured_max_s']:.4g}")
        rows.append({**row, "size": size, "spread": spread})
    # The group column only where some row ran on a named group (the world's is empty).
    on_groups = any(row.get("group") for row in rows)
    return common.format_table(rows, (
        ("kind", "kind", ""), *((("group", "group", ""),) if on_groups else ()), ("algorithm", "algorithm", ""),
        ("size", "size", ""), ("count", "count", "d"),
        ("predicted_s", "predicted s", ".4g"), ("measured_s", "measured s", ".4g"),
        ("spread", "measured min-max s", ""), ("error_pct", "error %", "+.1f"),
        ("algbw_GBps", "algbw GB/s", ".3g"), ("busbw_GBps", "busbw GB/s", ".3g"),
        ("predicted_busbw_GBps", "pred. busbw GB/s", ".3g"),
    ))


def plot_validation(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Predicted (x) against measured (y), log-log, one marker per kind and group, repeat spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>pPX*h"
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    usable = table[(table["predicted_s"] > 0) & (table["measured_s"] > 0)]
    groups = usable["group"].fillna("") if "group" in usable.columns else pd.Series("", index=usable.index)
    for i, ((kind, group), part) in enumerate(usable.groupby([usable["kind"], groups], sort=False)):
        label = "total (makespan)" if kind == "total" else f"{kind} on {group}" if group else kind
        low = (part["measured_s"] - part["measured_min_s"]).clip(lower=0).fillna(0)
        high = (part["measured_max_s"] - part["measured_s"]).clip(lower=0).fillna(0)
        ax.errorbar(part["predicted_s"], part["measured_s"], yerr=[low, high], fmt=markers[i % len(markers)],
                    color=f"C{i}", markersize=6, capsize=2, linestyle="none", label=label)
    if len(usable):
        values = pd.concat([usable["predicted_s"], usable["measured_s"], usable["measured_max_s"].dropna(),
                            usable["measured_min_s"].dropna()])
        values = values[values > 0]
        lo, hi = float(values.min()) / 2, float(values.max()) * 2
    else:
        lo, hi = 1e-6, 1.0
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted time (s)")
    ax.set_ylabel("measured time (s)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# -- the command -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.validate",
        description="Run a scenario in the simulator and for real (MPI or torch.distributed), and compare "
                    "predicted and measured time per group, operation kind and size.",
        epilog=f"Statistics: {STATISTIC}. {ERROR_SIGN}. algbw = nbytes/time; busbw = algbw * 2(n-1)/n "
               "(allreduce), (n-1)/n (allgather, reduce_scatter, alltoall), 1 (broadcast, reduce, send, recv), "
               "as nccl-tests defines them, n the size of the row's group. In native mode the library picks its "
               "own collective algorithm; the algorithm column is the scenario's (what the simulator models). "
               "Writes validation.csv, validation.png, sim_records.csv, real_records.csv and summary.json. "
               "Inside an MPI or torchrun job only rank 0 simulates, prints and writes. Exit codes: 0 done, "
               "1 the real run failed, 2 a bad scenario or option.",
    )
    p.add_argument("scenario", help="scenario file (YAML or JSON)")
    p.add_argument("--backend", required=True, choices=backends(real=True), help="the real executor")
    p.add_argument("--out", help="results folder (default results/validate-<scenario name>-<backend>)")
    p.add_argument("--profile", metavar="PROFILE.yaml",
                   help="simulate on the machine this profile measured (python -m experiments.calibrate); "
                        "the real run is unchanged")
    common.add_real_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepared = prepare_or_report(args)
    if prepared is None:
        return 2
    options, scenario, sim_scenario, executor = prepared
    rank = executor.job_rank()
    sim = simulate_or_report(scenario, sim_scenario, options, args) if rank == 0 else None
    # The other ranks of a job wait for rank 0's verdict here, not in the real
    # run's first barrier, where the watchdog would count the simulation
    # against --timeout.
    if not executor.share(sim is not None if rank == 0 else None):
        return 2

    try:
        real = executor.run(scenario)
    except RealRunError as exc:
        print(f"error: {args.scenario}: {exc}", file=sys.stderr)
        return 1
    if real is None or rank != 0:
        return 0  # a rank other than 0 of a job: rank 0 reports
    report_validation(args, options, scenario, sim, real)
    return 0


def prepare_or_report(args):
    """(the real run's options, the scenario, the scenario to simulate, the real executor), or None after
    printing the one problem (the caller exits 2)."""
    try:
        options = common.real_options(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    scenario = common.load_scenario_or_report(args.scenario)
    if scenario is None:
        return None
    sim_scenario = scenario
    if args.profile:
        try:
            sim_scenario = with_profile(scenario, load_profile(args.profile))
        except (ValueError, OSError) as exc:
            print(f"error: --profile {args.profile}: {exc}", file=sys.stderr)
            return None
    backend_class = executor_class(args.backend)
    try:
        executor = common.make_executor(args.backend, args)
    except (ValueError, RuntimeError, ImportError) as exc:
        if backend_class.announced_rank() in (None, 0):
            what = f"backend {args.backend!r} cannot be loaded: " if isinstance(exc, ImportError) else ""
            print(f"error: {what}{exc}", file=sys.stderr)
        return None
    return options, scenario, sim_scenario, executor


def simulate_or_report(scenario, sim_scenario, options, args):
    """The simulator's run of ``sim_scenario``, timed as the real run will be, or None after printing why not
    (then every rank of a job leaves with exit 2)."""
    try:
        problem = (aligned_problem(scenario.programs(), scenario.groups) if options.timing == "aligned"
                   else None)
        if problem:
            print(f"error: --timing aligned (a barrier before every operation) would deadlock: {problem}; "
                  "use --timing free or auto", file=sys.stderr)
            return None
        # Simulate as the real run will be timed: with every operation
        # starting together on all ranks when it puts a barrier before
        # each; a profile's corrections of the library's own collectives
        # only where the real run calls them (native mode).
        aligned = choose_timing(scenario.programs(), options.timing, scenario.groups) == "aligned"
        return get_executor("sim", aligned=aligned, native_collectives=args.mode == "native").run(sim_scenario)
    except SimulationError as exc:
        print(f"error: {args.scenario}: the simulator rejects it: {exc}", file=sys.stderr)
        return None


def report_validation(args, options, scenario, sim, real) -> None:
    """Write the table, its plot, both runs' records and summary.json into the results folder, and print
    the table."""
    table = validation_table(sim.records, real.records, scenario.nranks, scenario.groups)
    name = scenario.name or Path(args.scenario).stem
    out = make_out_dir(args.out or Path("results") / f"validate-{common.safe_name(name)}-{args.backend}")
    written = []
    path = out / "validation.csv"
    table.to_csv(path, index=False)
    written.append(path)
    written.append(plot_validation(table, out / "validation.png",
                                   title=f"{name}: {args.backend} {real.summary.get('mode', '')}, "
                                         f"{scenario.nranks} ranks"))
    for label, frame in (("sim_records.csv", sim.records), ("real_records.csv", real.records)):
        frame.to_csv(out / label, index=False)
        written.append(out / label)
    summary = validation_summary(args, options, scenario, name, table, sim, real)
    written.append(write_json(summary, out / "summary.json"))

    print(f"scenario {name} ({args.scenario}): {scenario.nranks} ranks, {args.backend} {summary['mode']}, "
          f"timing {summary['timing']}, {options.repeats} repeats on {', '.join(summary['hosts']) or '?'}")
    print(format_validation(table))
    print()
    print(f"median |error| {summary['median_abs_error_pct']:.1f} %   ({ERROR_SIGN})")
    print(f"wrote {', '.join(p.name for p in written)} to {out}/")


def validation_summary(args, options, scenario, name: str, table: pd.DataFrame, sim, real) -> dict[str, Any]:
    """summary.json: how the real run ran, and the makespans and errors of ``table``."""
    rs = real.summary
    total = table[table["kind"] == "total"].iloc[0]
    return {
        "scenario": name,
        "scenario_file": str(args.scenario),
        "backend": args.backend,
        "mode": rs.get("mode", options.mode),
        "timing": rs.get("timing", options.timing),
        "hosts": rs.get("hosts", []),
        "ranks": int(scenario.nranks),
        "repeats": options.repeats,
        "warmup": options.warmup,
        "profile": args.profile or (scenario.profile.name if scenario.profile is not None else None),
        "predicted_makespan_s": _num(total["predicted_s"]),
        "measured_makespan_s": _num(total["measured_s"]),
        "makespan_error_pct": _num(total["error_pct"]),
        "median_abs_error_pct": _num(median_abs_error_pct(table)),
        "statistic": STATISTIC,
        "error_sign": ERROR_SIGN,
        "real_wall_s": rs.get("wall_s"),
        "sim_wall_s": sim.summary.get("wall_s"),
    }


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


if __name__ == "__main__":
    raise SystemExit(main())
