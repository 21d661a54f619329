"""Shared pieces of the studies: scenario assembly, parallel runs, tables.

Experiments hold no model logic.  They write scenarios as plain dicts (the
same form a scenario file has), hand them to an executor, and tabulate what
comes back.  Every run goes through ``run_scenario_dict`` so that the
parallel studies ship only small dicts between processes, never DataFrames.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from executors import executor_class, get_executor
from executors.real import MODES, NETWORKS, TIMINGS, RealOptions
from experiments.output import make_out_dir
from experiments.sweep import (POINTS_DIR, SLURM_MEMORY_PER_CORE_GB, SchedulerError, SlurmOptions, SweepError,
                               run_points, slurm_problem)
from topologies.io import parse_yaml
from topologies.limits import MAX_MEMORY_ENV, resolve_max_memory_bytes
from topologies.text import parse_bytes
from workloads.scenario import ScenarioError, load_scenario, scenario_from_dict

# -- the topologies of the scaling study -----------------------------------------

STUDY_TOPOLOGIES = ("ring", "tree", "hierarchical", "edge_cloud")

# 100 Gb/s Ethernet-class links for the flat topologies.
LINK_BANDWIDTH_BYTES_PER_S = 12.5e9
# A fan-out-4 switch tree: few enough switches that their idle power does not
# swamp the energy column, deep enough (log4 256 = 4 levels) to show uplinks.
TREE_ARITY = 4
# GPUs per server in the hierarchical topology (the builder's default level
# bandwidths, innermost first: 300e9 NVSwitch, 25e9 NIC to the top-of-rack switch).
GROUP_SIZE = 8
# Edge-cloud split: one edge server per 16 ranks (at least one), one cloud
# node from N=3 on, the rest are devices, so that every size trains on at
# least one device (N=2 is a device and its edge server).
EDGE_RANKS_PER_SERVER = 16

# The all-reduce each topology runs by default, as a framework would choose:
# NCCL-style ring where links are uniform; on the hierarchical and edge-cloud
# topologies the 'hierarchical' algorithm (reduce inside each group, ring
# all-reduce among group leaders, broadcast back) keeps the slow links to one
# message per group.  It is also what makes 256-rank runs cheap to simulate:
# a flat ring costs 2(p-1)p point-to-point messages per bucket, about 130k at
# p=256, and the simulator spends roughly 10 us per message.
DEFAULT_ALGORITHM = {
    "ring": "ring",
    "tree": "ring",
    "hierarchical": "hierarchical",
    "edge_cloud": "hierarchical",
}


def study_topology(kind: str, n: int) -> dict[str, Any]:
    """The builder-form topology dict of ``kind`` with ``n`` ranks (see module constants)."""
    if kind == "ring":
        return {"builder": "ring", "n": n, "bandwidth_bytes_per_s": LINK_BANDWIDTH_BYTES_PER_S}
    if kind == "tree":
        return {"builder": "tree", "n": n, "arity": TREE_ARITY, "bandwidth_bytes_per_s": LINK_BANDWIDTH_BYTES_PER_S}
    if kind == "hierarchical":
        if n <= GROUP_SIZE:
            # One server: a single level (the fast intra-server network).
            return {"builder": "hierarchical", "levels": [n]}
        if n % GROUP_SIZE:
            raise ValueError(f"hierarchical: N={n} must be <= {GROUP_SIZE} or a multiple of {GROUP_SIZE}")
        return {"builder": "hierarchical", "levels": [n // GROUP_SIZE, GROUP_SIZE]}
    if kind == "edge_cloud":
        n_edge = max(1, n // EDGE_RANKS_PER_SERVER)
        n_cloud = 1 if n >= 3 else 0
        return {"builder": "edge_cloud", "n_devices": n - n_edge - n_cloud, "n_edge": n_edge, "n_cloud": n_cloud}
    raise ValueError(f"unknown study topology {kind!r}; known: {', '.join(STUDY_TOPOLOGIES)}")


def check_study_size(kind: str, n: int) -> str | None:
    """Why ``kind`` cannot have ``n`` ranks, or None."""
    if n < 2:
        return f"{kind}: N must be >= 2, got {n}"
    try:
        study_topology(kind, n)
    except ValueError as exc:
        return str(exc)
    return None


# -- running -----------------------------------------------------------------------

def run_scenario_dict(data: dict[str, Any], backend: str = "sim", base_dir: str | None = None,
                      where: str = "scenario", max_memory_bytes: int | None = None) -> dict[str, Any]:
    """Build, run and summarize one scenario; returns plain numbers only.

    Top-level so that a Dask worker can unpickle it.
    """
    scenario = scenario_from_dict(data, base_dir=Path(base_dir) if base_dir else None, where=where,
                                  max_memory_bytes=max_memory_bytes)
    # A real run's ranks load the scenario again, under the same limit.
    executor = get_executor(backend, options=RealOptions(max_memory_bytes=max_memory_bytes)) \
        if executor_class(backend).real else get_executor(backend)
    result = executor.run(scenario)
    return metrics(result)


def metrics(result) -> dict[str, Any]:
    """The columns every study reports, from one RunResult.

    ``comm_share`` is the mean over ranks of (comm_s + wait_s) / makespan: the
    part of the step a rank spends not computing, i.e. blocked on
    communication, waiting for slower peers, or idle after finishing early.
    With DDP's overlap the all-reduces run on the communication stream, so
    only their exposed (not hidden behind backward) part counts.
    """
    s = result.summary
    makespan = float(s["makespan_s"])
    pr = result.per_rank
    if len(pr.columns):
        compute_mean = float(pr["compute_s"].mean())
        comm_mean = float(pr["comm_s"].mean())
        wait_mean = float(pr["wait_s"].mean())
    else:
        compute_mean = float(s.get("compute_s_mean", 0.0))
        comm_mean = float(s.get("comm_s_mean", 0.0))
        wait_mean = float(s.get("wait_s_mean", 0.0))
    share = (comm_mean + wait_mean) / makespan if makespan > 0 else 0.0
    return {
        "nranks": int(s["nranks"]),
        "makespan_s": makespan,
        "compute_s_mean": compute_mean,
        "comm_s_mean": comm_mean,
        "wait_s_mean": wait_mean,
        "comm_share": share,
        "energy_j": float(s.get("total_energy_j", float("nan"))),
        "messages": int(s.get("messages", 0)),
        # Host time of the run: reported on the progress line, never in a table
        # (tables must not depend on the machine).
        "wall_s": float(s.get("wall_s", 0.0)),
    }


def default_jobs() -> int:
    return os.cpu_count() or 1


def jobs_for(backend: str, jobs: int) -> int:
    """Parallel runs for ``backend``: one at a time for a real one (two real runs on
    one machine disturb each other's measurements), else ``jobs``."""
    return 1 if executor_class(backend).real else jobs


def progress_text(done: int, total: int, elapsed_s: float, per_point_s: float | None = None) -> str:
    """The ``[k/n ...]`` head of a progress line: the wall time so far and, while points
    remain and ``per_point_s`` is known, the time left at that pace.  Printed only,
    never stored."""
    head = f"[{done}/{total} {elapsed_s:.1f} s elapsed"
    if done >= total or per_point_s is None:
        return head + "]"
    left = per_point_s * (total - done)
    return head + (f", ~{left:.0f} s left]" if left >= 10 else f", ~{left:.1f} s left]")


def run_many(tasks: Sequence[tuple[Callable, tuple]], *, jobs: int,
             label: Callable[[int, Any], str] | None = None, cost: Sequence[float] | None = None,
             stream=None, cache_dir: str | Path | None = None, scheduler: str | None = None,
             cache_if: Callable[[Any], bool] | None = None, reuse: bool = True,
             slurm: SlurmOptions | None = None) -> list[Any]:
    """Run ``fn(*args)`` for every task, ``jobs`` at a time; results in task order.

    The points run through ``experiments.sweep``: serially here for ``jobs <= 1``,
    else on Dask (an embedded LocalCluster, the cluster at ``scheduler``, or Slurm
    jobs with ``slurm``).  With ``cache_dir`` each result is stored as it finishes
    and a rerun reuses it (``reuse=False``: computes every point again).  ``cost``
    (an estimate per task) only orders submission, dearest first, so the long runs
    do not end up last on one worker; results never depend on it or on ``jobs``.
    ``label(i, result)`` is printed to ``stream`` (stderr) as each task finishes,
    after a ``[k/n 3.1 s elapsed, ~22 s left]`` head (the time left at the pace
    of the points finished so far; ``[k/n reused]`` for a cached point).  A task that raises does not stop the others: at the end
    ``SweepError`` lists every failure.
    """
    stream = sys.stderr if stream is None else stream
    total = len(tasks)
    order = list(range(total))
    if cost is not None:
        order.sort(key=lambda i: -cost[i])
    done = 0
    computed = 0
    start = time.monotonic()
    first = None  # when the first point of this run finished

    def head() -> str:
        # The pace is measured from the first point finished on, so that starting a
        # cluster is not counted, and in points per second, so that N workers count.
        nonlocal done, computed, first
        done += 1
        computed += 1
        now = time.monotonic()
        if first is None:
            first = now
        pace = (now - first) / (computed - 1) if computed > 1 else None
        return progress_text(done, total, now - start, pace)

    def report(i: int, result: Any) -> None:
        text = head()
        if label is not None:
            print(f"{text} {label(i, result)}", file=stream, flush=True)

    def report_reused(i: int, result: Any) -> None:
        nonlocal done
        done += 1
        if label is not None:
            print(f"[{done}/{total} reused] {label(i, result)}", file=stream, flush=True)

    def report_failure(i: int, why: str) -> None:
        print(f"{head()} point {i + 1} failed: {why}", file=stream, flush=True)

    try:
        results, stats = run_points(tasks, jobs=jobs, cache_dir=cache_dir, scheduler=scheduler,
                                    cache_if=cache_if, on_done=report, on_failed=report_failure,
                                    on_reused=report_reused, order=order, stream=stream, reuse=reuse,
                                    slurm=slurm)
    except KeyboardInterrupt:
        if cache_dir is not None:
            print(f"interrupted: the points that finished are kept in {cache_dir}; "
                  "run the same command again to resume", file=stream, flush=True)
        raise
    if cache_dir is not None:
        print(f"sweep: {stats.computed} computed, {stats.reused} reused, {len(stats.failed)} failed "
              f"of {total} points", file=stream, flush=True)
    if stats.failed:
        raise SweepError(sorted(stats.failed), results)
    return results


_WALLTIME = re.compile(r"\d+:[0-5]\d:[0-5]\d")


def _walltime(text: str) -> str:
    if not _WALLTIME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected HH:MM:SS, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _memory_size(text: str) -> str:
    from dask.utils import parse_bytes  # what SLURMCluster reads it with

    try:
        parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a size such as 16GB or 8GiB, got {text!r}") from None
    return text


# The --slurm-* options and their SlurmOptions field.
_SLURM_FIELDS = {"slurm_partition": "partition", "slurm_walltime": "walltime", "slurm_cores": "cores",
                 "slurm_jobs": "jobs", "slurm_memory": "memory"}


def add_sweep_options(parser) -> None:
    """Where a sweep's points run (``--scheduler`` or ``--slurm``), and ``--fresh``: ignore the cache."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", metavar="tcp://HOST:8786",
        help="run the points on the Dask cluster of this scheduler (default: a local cluster of --jobs "
             "worker processes; --jobs 1 runs them here, one after another)")
    where.add_argument(
        "--slurm", action="store_true",
        help="run the points on Dask workers started as Slurm jobs (dask-jobqueue's SLURMCluster; needs "
             "sbatch and pip install -e '.[slurm]'); see the --slurm-* options")
    g = parser.add_argument_group("Slurm (--slurm)")
    g.add_argument("--slurm-jobs", type=_positive_int, metavar="N",
                   help="Slurm jobs to submit (default 1); each runs one worker per core")
    g.add_argument("--slurm-cores", type=_positive_int, metavar="N", help="cores per job (default 1)")
    g.add_argument("--slurm-walltime", type=_walltime, metavar="HH:MM:SS",
                   help="time limit of each job (default 01:00:00)")
    g.add_argument("--slurm-partition", metavar="NAME", help="partition (default: the cluster's default)")
    g.add_argument("--slurm-memory", type=_memory_size, metavar="SIZE",
                   help=f"memory per job, e.g. 16GB (default {SLURM_MEMORY_PER_CORE_GB}GB per core)")
    parser.add_argument(
        "--fresh", action="store_true",
        help=f"compute every point again instead of reusing the results stored in OUT/{POINTS_DIR}/ (a point "
             "is reused when its scenario, backend, the contents of the files it names, the distsim version "
             "and its code are the same, so editing any of them recomputes the points it may change on its own)")


def slurm_options(args) -> SlurmOptions | None:
    """The ``SlurmOptions`` of ``--slurm`` and the ``--slurm-*`` options, or None without ``--slurm``."""
    if not getattr(args, "slurm", False):
        return None
    given = {name: getattr(args, option) for option, name in _SLURM_FIELDS.items()
             if getattr(args, option, None) is not None}
    return SlurmOptions(**given)


def sweep_kwargs(args) -> dict[str, Any]:
    """``run_many``'s ``scheduler``, ``slurm`` and ``reuse`` from the ``add_sweep_options`` arguments."""
    return {"scheduler": args.scheduler, "slurm": slurm_options(args), "reuse": not args.fresh}


def sweep_options_problem(args) -> str | None:
    """Why the sweep options cannot work here (a ``--slurm-*`` option without ``--slurm``,
    no dask-jobqueue, no sbatch), or None."""
    if not hasattr(args, "fresh"):
        return None  # a command without sweep options
    if not args.slurm:
        stray = [f"--{o.replace('_', '-')}" for o in _SLURM_FIELDS if getattr(args, o) is not None]
        return f"{', '.join(stray)} needs --slurm" if stray else None
    return slurm_problem()


def report_sweep_failures(exc: SweepError, what: Callable[[int], str]) -> None:
    """Print every failed point of a sweep, one line each, naming it by ``what(i)``."""
    print(f"error: {len(exc.failures)} point(s) failed (the others are kept; a rerun retries only these):",
          file=sys.stderr)
    for i, why in exc.failures:
        print(f"  {what(i)}: {why}", file=sys.stderr)


# -- values and paths --------------------------------------------------------------

_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)", re.IGNORECASE)


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it, but ``1e9`` is a float (YAML 1.1 reads a string)."""
    try:
        # The scenario reader's parser: its limits (depth, aliases) hold here too.
        value = parse_yaml(text, where="value", error=ValueError)
    except ValueError:
        return text
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def format_value(value: Any) -> str:
    """A varied value for labels: floats short (1e+09), the rest as text."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def numeric_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# -- output ------------------------------------------------------------------------

def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format spec) triples."""
    rows = list(rows)
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key, "")
            if isinstance(value, float) and not math.isfinite(value):
                line.append("-")
            elif spec and isinstance(value, (int, float)) and not isinstance(value, bool):
                line.append(format(value, spec))
            else:
                line.append(str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for k, line in enumerate(cells):
        out.append("  ".join(c.rjust(w) if k and _numberish(c) else c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _numberish(text: str) -> bool:
    return bool(_FLOAT.fullmatch(text)) or text == "-"


def out_dir_problem(path: str | Path) -> str | None:
    """Why no results folder can be made at ``path``, or None; checked before any work starts.

    ``path`` may exist (as a folder we can write) or not (then its nearest
    existing parent must be a folder we can write), as ``make_out_dir`` needs.
    """
    out = Path(path)
    try:
        if out.exists():
            if not out.is_dir():
                return f"--out {out}: exists and is not a folder"
            where, why = out, f"--out {out}: the folder is not writable"
        else:
            where = out.absolute().parent
            while not where.exists():
                where = where.parent
            if not where.is_dir():
                return f"--out {out}: {where} is not a folder"
            why = f"--out {out}: cannot create it, {where} is not writable"
        if not os.access(where, os.W_OK | os.X_OK):
            return why
        # os.access says yes to root everywhere, even in /proc or on a
        # read-only mount: make (and remove) a folder to be sure.
        os.rmdir(tempfile.mkdtemp(prefix=".distsim-out-check-", dir=where))
    except OSError as exc:
        return f"--out {out}: cannot write there: {exc.strerror or exc}"
    return None


# -- the memory limit of a scenario ---------------------------------------------------


def add_max_memory_option(parser) -> None:
    parser.add_argument(
        "--max-memory", type=_max_memory_bytes, metavar="BYTES",
        help=f"refuse a scenario whose estimated memory (topology and programs) exceeds BYTES "
             f"(e.g. 8GiB, 8e9; default ${MAX_MEMORY_ENV} or 2GiB)")


def _max_memory_bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def start_or_report(args, out) -> int | None:
    """What every command checks before any work: the results folder ``out`` (None: not
    known yet), the sweep options (``--slurm`` needs dask-jobqueue and sbatch) and the
    memory limit.  Returns the limit, or None after printing the one problem (the
    caller exits 2)."""
    problem = out_dir_problem(out) if out is not None else None
    problem = problem or sweep_options_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return None
    return max_memory_or_report(args)


def max_memory_or_report(args) -> int | None:
    """The memory limit: ``--max-memory``, else the environment's, else the default; None after
    printing why ``$DISTSIM_MAX_MEMORY_BYTES`` is invalid (the caller exits 2)."""
    try:
        return resolve_max_memory_bytes(args.max_memory if args.max_memory is not None
                                        else max_memory_from_environment())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def max_memory_from_environment() -> int | None:
    """``$DISTSIM_MAX_MEMORY_BYTES`` in bytes, None where it is unset or empty (ValueError if unreadable):
    the one place the limit is read from the environment; every layer below takes it as an argument."""
    text = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if not text:
        return None
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {MAX_MEMORY_ENV}: {exc}") from None


# -- options of the real executors (experiments.run, experiments.validate) -------


def add_real_options(parser) -> None:
    g = parser.add_argument_group("real runs (--backend mpi | torch)")
    g.add_argument("--mode", default="native", choices=MODES,
                   help="collectives as the library's own call (native, default) or as the lowered "
                        "point-to-point steps of the scenario's algorithm (algorithm)")
    g.add_argument("--warmup", type=int, default=1, help="untimed repeats first (default 1)")
    g.add_argument("--repeats", type=int, default=5, help="timed repeats of the whole program (default 5)")
    g.add_argument("--timing", default="auto", choices=TIMINGS,
                   help="aligned: a barrier before every operation; free: one per repeat; "
                        "auto (default): aligned when every rank runs the same operations, none non-blocking")
    g.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="a rank stuck this long in one operation ends the run (default 120 s)")
    g.add_argument("--check", action="store_true",
                   help="check every collective's result (fills buffers; slower)")
    g.add_argument("--no-pin", action="store_true",
                   help="do not bind each rank to a core of its own (by default ranks are bound when the "
                        "host has a core per rank)")
    g.add_argument("--hostfile", help="MPI hostfile, for a run launched across machines")
    g.add_argument("--network", default="host", choices=NETWORKS,
                   help="host (default): the ranks talk over this machine's own paths; emulated: over the "
                        "scenario's topology built on this machine, a namespace per node and a shaped link per "
                        "link (root; see python -m experiments.emulate)")


def real_options(args, max_memory_bytes: int | None = None):
    """RealOptions from the parsed ``add_real_options`` arguments (ValueError on bad values);
    ``max_memory_bytes``: the limit the scenario was loaded under, which its ranks load it under too."""
    return RealOptions(mode=args.mode, warmup=args.warmup, repeats=args.repeats, timing=args.timing,
                       timeout_s=args.timeout, check=args.check, pin=not args.no_pin, network=args.network,
                       max_memory_bytes=max_memory_bytes)


def make_executor(backend: str, args, progress=None, max_memory_bytes: int | None = None):
    """The executor for ``backend`` with the options given on the command line."""
    if not executor_class(backend).real:
        return get_executor(backend, progress=progress)
    return get_executor(backend, options=real_options(args, max_memory_bytes), hostfile=args.hostfile)


# -- names ---------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """``name`` as one path component (letters, digits, ``._-``), for results folders."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scenario"


def load_scenario_or_report(path, max_memory_bytes: int | None = None):
    """The scenario in ``path``, or None after printing its one-line error (the caller exits 2)."""
    try:
        return load_scenario(path, max_memory_bytes=max_memory_bytes)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
