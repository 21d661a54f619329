"""Write a Slurm batch script that runs a scenario for real on a cluster.

    python -m experiments.sbatch SCENARIO.yaml --nodes 2 --ntasks-per-node 4 > job.sh
    python -m experiments.sbatch SCENARIO.yaml --nodes 4 --ntasks-per-node 8 --backend torch \\
        --gpus-per-node 8 --partition gpu --time 00:30:00 --out job.sh -- --repeats 20
    sbatch job.sh

``--command validate`` (default) runs ``experiments.validate`` (simulator
against the real run), ``--command run`` runs ``experiments.run``.  Arguments
this command does not know (or everything after ``--``) are passed on to that
command unchanged (``--repeats 20 --mode algorithm``).

- mpi: ``srun`` starts nodes x ntasks-per-node ranks, and each one finds its
  peers through Slurm's PMI (``--mpi=pmi2`` for MPICH and the mpich wheel,
  ``--mpi=pmix`` for Open MPI; ``SRUN_MPI=pmix sbatch job.sh`` switches);
- torch: ``srun`` starts one ``torchrun`` per node, which starts
  ntasks-per-node workers and meets the other nodes at the first node of the
  allocation (c10d rendezvous, port 29500).

The scenario must have exactly nodes x ntasks-per-node ranks.  Paths are
relative to the directory ``sbatch`` is run from (the script changes into
it).  Results go to ``results/<command>-<scenario name>-<backend>-<job id>``
unless the passed-on arguments name ``--out``.
Exit codes: 0 written, 2 a bad scenario or option (nothing written).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from executors import backends, executor_class
from experiments.common import safe_name
from workloads.scenario import ScenarioError, load_scenario

COMMANDS = ("validate", "run")
_TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$|^\d+$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sbatch",
        description="Write a Slurm batch script that runs a scenario for real (MPI via srun, or torchrun per node).",
        epilog="Unknown arguments, and everything after --, are passed on to experiments.<command>. "
               "The scenario must have nodes x ntasks-per-node ranks. mpi: srun --mpi=$SRUN_MPI (default pmi2; "
               "pmix for Open MPI). torch: one torchrun per node, c10d rendezvous on the first node, port 29500.",
    )
    p.add_argument("scenario", help="scenario file (YAML or JSON), relative to the submit directory or absolute")
    p.add_argument("--nodes", type=int, required=True, help="nodes to allocate")
    p.add_argument("--ntasks-per-node", type=int, required=True, help="ranks per node")
    p.add_argument("--backend", default="mpi", choices=backends(real=True), help="real executor (default mpi)")
    p.add_argument("--command", default="validate", choices=COMMANDS,
                   help="experiments.validate (default) or experiments.run")
    p.add_argument("--time", default="00:30:00", help="wall-time limit, [D-]HH:MM:SS (default 00:30:00)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPU cores per rank (default 1)")
    p.add_argument("--job-name", help="job name (default distsim-<scenario name>)")
    p.add_argument("--out", help="write the script here (default: print it)")
    return p


def check(args, nranks: int) -> None:
    """ValueError naming the first bad option."""
    for name in ("nodes", "ntasks_per_node", "cpus_per_task"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node must be >= 0, got {args.gpus_per_node}")
    if not _TIME.match(args.time):
        raise ValueError(f"--time must look like HH:MM:SS or D-HH:MM:SS, got {args.time!r}")
    if args.nodes * args.ntasks_per_node != nranks:
        raise ValueError(
            f"the scenario has {nranks} ranks but --nodes {args.nodes} x --ntasks-per-node "
            f"{args.ntasks_per_node} = {args.nodes * args.ntasks_per_node}; choose counts whose product is {nranks}"
        )


def _names_out(extra: list[str]) -> bool:
    return any(a == "--out" or a.startswith("--out=") for a in extra)


def script(args, scenario_name: str, extra: list[str]) -> str:
    """The batch script text (``args`` as parsed by ``build_parser``, already checked)."""
    name = safe_name(scenario_name)
    job = args.job_name or f"distsim-{name}"
    k = args.ntasks_per_node
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={k}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    if args.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    lines += [
        f"#SBATCH --output={job}-%j.out",
        "#",
        f"# Written by python -m experiments.sbatch: {args.nodes} nodes x {k} ranks = {args.nodes * k} ranks, "
        f"backend {args.backend}.",
        "",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        "PYTHON=${PYTHON:-python}",
        "# One BLAS thread per core a rank owns: ranks on a node share its cores.",
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{args.cpus_per_task}}}",
        "",
    ]
    command = [f"experiments.{args.command}", shlex.quote(str(args.scenario)), "--backend", args.backend]
    if not _names_out(extra):
        command += ["--out", f'"results/{args.command}-{name}-{args.backend}-${{SLURM_JOB_ID}}"']
    command += [shlex.quote(a) for a in extra]
    step = executor_class(args.backend).slurm_step(args.nodes, k, args.cpus_per_task, " ".join(command))
    lines += step
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        check(args, scenario.nranks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = script(args, scenario.name or Path(args.scenario).stem, extra)
    if args.out:
        path = Path(args.out)
        if path.parent != Path("."):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({args.nodes} nodes x {args.ntasks_per_node} ranks, {args.backend}); "
              f"submit with: sbatch {shlex.quote(str(path))}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
