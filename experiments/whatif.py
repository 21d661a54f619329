"""What if a parameter of a scenario file had other values?

    python -m experiments.whatif experiments/scenarios/ring8_allreduce.yaml \\
        --vary topology.bandwidth_bytes_per_s=1e9,1e10,1e11
    python -m experiments.whatif SCENARIO.yaml --vary topology.n=8,16,32 --vary seed=1,2,3

``--vary PATH=V1,V2,...`` names a value in the scenario file's mapping by a
dotted path (``topology.n``, ``workload.nbytes``, ``stragglers.sigma``,
``seed``; a number indexes a list: ``topology.levels.0``).  Values are YAML
scalars (``8``, ``0.5``, ``ring``, ``[4, 8]``), and ``1e9``-like text is a
float.  Split at commas outside brackets.  Several ``--vary`` run every
combination.

Path rule: every part but the last must exist; the last may be a new key of
an existing mapping (a builder argument the file leaves at its default, like
``topology.latency_s``), and the scenario's own validation then says whether
that key means anything.  A missing inner part is an error that lists the
keys at that level.

Columns: the varied values, N, makespan, speedup = makespan(first variant) /
makespan, comm share (mean over ranks of (comm_s + wait_s) / makespan, as in
``experiments.scaling``), energy.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from executors import backends
from experiments import common, plots
from experiments.output import make_out_dir
from topologies.text import short, short_names
from workloads.scenario import ScenarioError, read_scenario_file, scenario_from_dict

TOP_LEVEL = ("name", "seed", "topology", "workload", "stragglers", "energy", "description")


class PathError(ValueError):
    """A --vary path that does not name a place in the scenario."""


def split_values(text: str) -> list[str]:
    """Split at commas that are not inside [] or {}."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_vary(text: str) -> tuple[str, list[Any]]:
    path, sep, values = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ValueError(f"--vary: expected PATH=V1,V2,..., got {text!r}")
    items = split_values(values)
    if any(not v for v in items):
        raise ValueError(f"--vary {path}: empty value in {values!r}")
    return path, [common.parse_scalar(v) for v in items]


def _keys(node) -> str:
    if isinstance(node, dict):
        return short_names(node) or "(none)"
    if isinstance(node, list):
        return f"indices 0..{len(node) - 1}"
    return "(none)"


def set_path(data: dict, path: str, value: Any) -> None:
    """Set ``data[a][b]... = value`` for ``path`` 'a.b...'; see the module docstring for the rule."""
    parts = path.split(".")
    if any(not p for p in parts):
        raise PathError(f"--vary {path}: empty part in the path")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the top level"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise PathError(f"--vary {path}: {part!r} is not an index of {here} ({_keys(node)})")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                allowed_new = last and (depth > 0 or part in TOP_LEVEL)
                if not allowed_new:
                    extra = f"; allowed at the top level: {', '.join(TOP_LEVEL)}" if depth == 0 else ""
                    raise PathError(
                        f"--vary {path}: no key {part!r} in {here}; keys there: {_keys(node)}{extra}"
                    )
            if last:
                node[part] = value
                return
            node = node[part]
        else:
            parent = ".".join(parts[:depth])
            what = "a file path" if isinstance(node, str) and parent == "topology" else type(node).__name__
            raise PathError(
                f"--vary {path}: {parent} is {what} ({short(node)}), not a mapping; cannot set {part!r} in it"
            )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.whatif",
        description="Run a scenario file with one or more of its parameters varied, in parallel; "
                    "print a table and write whatif.csv and whatif.png.",
        epilog="PATH is a dotted path into the file's mapping (topology.bandwidth_bytes_per_s, topology.n, "
               "workload.nbytes, stragglers.sigma, seed; a number indexes a list). Every part but the last "
               "must exist; the last may be a new key of an existing mapping (e.g. a builder argument the "
               "file leaves at its default). Values are YAML scalars split at commas outside brackets; "
               "1e9-like text is a float. speedup = makespan of the first variant / makespan; comm share = "
               "mean over ranks of (comm_s + wait_s) / makespan.",
    )
    p.add_argument("scenario", help="scenario file (YAML or JSON)")
    p.add_argument("--vary", action="append", required=True, metavar="PATH=V1,V2,...",
                   help="a parameter and its values; repeat for the cartesian product")
    p.add_argument("--backend", default="sim", choices=backends(), help="executor (default sim)")
    p.add_argument("--out", help="results folder (default results/whatif-<scenario file stem>)")
    p.add_argument("--jobs", type=int, default=common.default_jobs(),
                   help="parallel worker processes (default: CPU count; a real backend runs one at a time, "
                        "since runs side by side disturb each other's measurements); results do not depend on it")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    common.add_sweep_options(p)
    common.add_max_memory_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    varies = check_arguments(parser, args)
    path = Path(args.scenario)
    out = Path(args.out or Path("results") / f"whatif-{path.stem}")
    max_memory_bytes = common.start_or_report(args, out)
    if max_memory_bytes is None:
        return 2
    base = read_base_or_report(path)
    if base is None:
        return 2
    name = str(base.get("name") or path.stem)
    variants = variants_or_report(parser, base, varies, name, path, max_memory_bytes)
    if variants is None:
        return 2
    try:
        results = run_variants(variants, args, path, out, max_memory_bytes)
    except common.SweepError as exc:
        # A variant that deadlocks or loses messages: say which, not a worker's traceback.
        print(f"error: {path}: a variant could not run to the end", file=sys.stderr)
        common.report_sweep_failures(exc, lambda i: variants[i][1])
        return 1
    except common.SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    params = [p for p, _ in varies]
    write_whatif(result_rows(variants, params, results), params, name, path, out, args.no_plots)
    return 0


def check_arguments(parser: argparse.ArgumentParser, args) -> list[tuple[str, list[Any]]]:
    """Each --vary's path and values, in order; a bad option exits 2 through ``parser.error``."""
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    varies: list[tuple[str, list[Any]]] = []
    for text in args.vary:
        try:
            path, values = parse_vary(text)
        except ValueError as exc:
            parser.error(str(exc))
        if path in (p for p, _ in varies):
            parser.error(f"--vary {path}: given twice")
        varies.append((path, values))
    return varies


def read_base_or_report(path: Path) -> dict | None:
    """The scenario file's mapping, or None after printing its one-line error (the caller exits 2)."""
    try:
        base = read_scenario_file(path)
        if not isinstance(base, dict):
            raise ScenarioError(f"{path}: expected a mapping at the top level, got {type(base).__name__}")
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return base


def variants_or_report(parser: argparse.ArgumentParser, base: dict, varies: list[tuple[str, list[Any]]],
                       name: str, path: Path, max_memory_bytes: int) -> list[tuple] | None:
    """(values, label, scenario data, where) of every combination, each validated; None after printing the
    first bad one's error (the caller exits 2).  A path that names no place exits 2 through ``parser.error``."""
    params = [p for p, _ in varies]
    variants = []
    for combo in itertools.product(*(values for _, values in varies)):
        data = copy.deepcopy(base)
        for param, value in zip(params, combo):
            try:
                set_path(data, param, value)
            except PathError as exc:
                parser.error(str(exc))
        label = ", ".join(f"{p}={common.format_value(v)}" for p, v in zip(params, combo))
        data["name"] = f"{name} [{label}]"
        where = f"{path} with {label}"
        # Validate every variant here, so a bad value is one clear line (exit 2)
        # rather than a traceback from a worker process.
        try:
            scenario_from_dict(data, base_dir=path.parent, where=where, max_memory_bytes=max_memory_bytes)
        except ScenarioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None
        variants.append((combo, label, data, where))
    return variants


def run_variants(variants: list[tuple], args, path: Path, out: Path, max_memory_bytes: int) -> list[dict]:
    """Each variant's metrics (``common.run_scenario_dict``), in order, cached under ``out``."""
    tasks = [(common.run_scenario_dict, (data, args.backend, str(path.parent), where, max_memory_bytes))
             for _, _, data, where in variants]
    return common.run_many(
        tasks, jobs=common.jobs_for(args.backend, args.jobs),
        label=lambda i, m: f"{variants[i][1]}  N={m['nranks']}  makespan {m['makespan_s']:.4g} s",
        cache_dir=out / common.POINTS_DIR, **common.sweep_kwargs(args),
    )


def result_rows(variants: list[tuple], params: list[str], results: list[dict]) -> list[dict]:
    """A row per variant: its values, then its metrics, speedup against the first variant."""
    rows = []
    first = results[0]["makespan_s"]
    for (combo, _, _, _), m in zip(variants, results):
        # Lists and mappings (e.g. topology.levels=[4,8]) go into the table as text.
        row = {p: (json.dumps(v) if isinstance(v, (list, dict)) else v) for p, v in zip(params, combo)}
        row.update({
            "n": m["nranks"],
            "makespan_s": m["makespan_s"],
            "speedup": first / m["makespan_s"] if m["makespan_s"] > 0 else float("nan"),
            "comm_share": m["comm_share"],
            "energy_j": m["energy_j"],
            "compute_s_mean": m["compute_s_mean"],
            "wait_s_mean": m["wait_s_mean"],
            "messages": m["messages"],
        })
        rows.append(row)
    rows[0]["speedup"] = 1.0
    return rows


def write_whatif(rows: list[dict], params: list[str], name: str, path: Path, out: Path, no_plots: bool) -> None:
    """Write whatif.csv (and whatif.png) into ``out`` and print the table."""
    columns = params + ["n", "makespan_s", "speedup", "comm_share", "energy_j", "compute_s_mean",
                        "wait_s_mean", "messages"]
    frame = pd.DataFrame(rows, columns=columns)
    out = make_out_dir(out)
    csv_path = out / "whatif.csv"
    frame.to_csv(csv_path, index=False)
    table = [(p, p, ".4g") for p in params] + [
        ("n", "N", "d"),
        ("makespan_s", "makespan s", ".4g"),
        ("speedup", "speedup", ".3f"),
        ("comm_share", "comm share", ".3f"),
        ("energy_j", "energy J", ".4g"),
    ]
    print(f"scenario {name} ({path})")
    print(common.format_table(rows, table))
    print()
    print("speedup = makespan(first variant)/makespan; comm share = mean over ranks of (comm_s + wait_s)/makespan")
    written = [csv_path]
    if not no_plots:
        written += plots.plot_whatif(frame, params, out)
    print(f"wrote {', '.join(p.name for p in written)} to {out}/")


if __name__ == "__main__":
    raise SystemExit(main())
