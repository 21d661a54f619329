"""Does the MPI executor add to what it measures?

    python benchmarks/executor_overhead.py [--ranks 2] [--repeats 20] [--warmup 3] [--rounds 5] [--launched]

For each collective and size (allreduce and allgather at 1, 4 and 16 MiB by
default) it compares two measurements of the same call, made in one
``mpiexec -n N`` job (this script re-run with ``--worker``), alternating
``--rounds`` times so that the drift of a shared machine hits both alike:

- bare: the same mpi4py calls in the same order on the same buffers
  (barrier; t0 = MPI.Wtime(); comm.Allreduce(IN_PLACE, buf); t1), with the
  same warm-up and repeats;
- executor: the executor's rank runner (``executors.real.run_real`` on the
  MPI backend, native mode, aligned timing, per-rank status files and
  watchdog thread): what ``MPIExecutor`` runs on every rank, whether it was
  started inside an MPI job or launched mpiexec itself.

``--launched`` adds a column for ``MPIExecutor().run`` from this plain
process (it launches its own mpiexec each round, with the launcher polling
the status files), which cannot alternate with the bare loop as closely.

Both use the statistic ``experiments.validate`` uses: per repeat the longest
of the ranks' times, then the median over all rounds' repeats.  Prints
``collective nbytes executor_s bare_s overhead_pct`` per line, with
overhead_pct = (executor_s - bare_s) / bare_s * 100.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Executor overhead against a bare mpi4py loop (see the docstring).")
    p.add_argument("--ranks", type=int, default=2, help="MPI processes (default 2)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per launch (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repeats first (default 3)")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternate the bare loop and the executor this many times, pooling repeats (default 5)")
    p.add_argument("--collectives", default="allreduce,allgather", help="comma-separated (default allreduce,allgather)")
    p.add_argument("--sizes-mib", default="1,4,16", help="comma-separated sizes in MiB (default 1,4,16)")
    p.add_argument("--launched", action="store_true",
                   help="also time MPIExecutor().run launched from this process (its own mpiexec per round)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def operations(collectives: list[str], sizes: list[int]) -> list[tuple[str, int]]:
    return [(c, s) for c in collectives for s in sizes]


def scenario(nranks: int, ops: list[tuple[str, int]]):
    from workloads.scenario import scenario_from_dict

    program = [{"kind": c, "nbytes": s} for c, s in ops]
    return scenario_from_dict({
        "name": "executor-overhead",
        "topology": {"builder": "switch", "n": nranks},
        "workload": {"kind": "programs", "ranks": [program] * nranks},
    }, where="executor-overhead")


def per_repeat_times(records) -> dict[tuple[str, int], list[float]]:
    """(collective, nbytes) -> per-repeat max over ranks of the op's duration."""
    frame = records.assign(duration_s=records["end_s"] - records["start_s"])
    per = frame.groupby(["kind", "nbytes", "repeat", "op_index"])["duration_s"].max()
    out: dict[tuple[str, int], list[float]] = {}
    for (kind, nbytes, _repeat, _index), value in per.items():
        out.setdefault((kind, int(nbytes)), []).append(float(value))
    return out


# -- the bare loop (under mpiexec) ---------------------------------------------------


def bare_calls(comm, buf, ops):
    """The mpi4py calls the executor makes for ``ops``, on slices of one buffer."""
    from mpi4py import MPI

    from workloads.collectives import block_layout


    u8 = MPI.UNSIGNED_CHAR
    calls = []
    for kind, nbytes in ops:
        view = buf[:nbytes]
        if kind == "allreduce":
            calls.append(lambda v=view: comm.Allreduce(MPI.IN_PLACE, [v, u8], op=MPI.SUM))
        elif kind == "allgather":
            layout = block_layout(nbytes, comm.Get_size())
            counts, displs = [s for _, s in layout], [o for o, _ in layout]
            # Allgatherv, as the executor calls it (blocks of uneven size are allowed there).
            calls.append(lambda v=view, c=counts, d=displs: comm.Allgatherv(MPI.IN_PLACE, [v, c, d, u8]))
        else:
            raise SystemExit(f"bare loop: no call for {kind}")
    return calls


def worker(args) -> int:
    import numpy as np
    from mpi4py import MPI


    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    ops = operations(args.collectives.split(","), [int(float(s) * MiB) for s in args.sizes_mib.split(",")])
    biggest = max(s for _, s in ops)
    from executors.real.mpi import MPIBackend
    from executors.real import RealOptions, run_real

    backend = MPIBackend()
    # Bind now, as run_real would, so that the first bare round runs as bound as the rest.
    backend.pin_to_core()
    options = RealOptions(mode="native", timing="aligned", warmup=args.warmup, repeats=args.repeats)
    scen = scenario(size, ops)
    status_dir = tempfile.mkdtemp(prefix="distsim-overhead-") if rank == 0 else None
    status_dir = comm.bcast(status_dir, root=0)
    result = {"bare": {}, "executor": {}}
    for round_ in range(args.rounds):
        # Odd rounds run the executor first, so that neither side always
        # follows the other (caches, page state, a neighbour's load).
        if round_ % 2:
            run = run_real(backend, scen, options, status_dir=status_dir)
        # A fresh buffer each round, as each run_real allocates its own: large
        # buffers that have just been mapped are measurably slower to copy
        # (page faults and the kernel's huge-page policy), whoever owns them.
        calls = bare_calls(comm, np.zeros(biggest, dtype=np.uint8), ops)
        mine: list[list[float]] = [[] for _ in ops]
        for repeat in range(-args.warmup, args.repeats):
            for i, call in enumerate(calls):
                comm.Barrier()
                t0 = MPI.Wtime()
                call()
                t1 = MPI.Wtime()
                if repeat >= 0:
                    mine[i].append(t1 - t0)
        gathered = comm.gather(mine, root=0)
        if not round_ % 2:
            run = run_real(backend, scen, options, status_dir=status_dir)
        if rank == 0:
            for i, (kind, nbytes) in enumerate(ops):
                result["bare"].setdefault(f"{kind}:{nbytes}", []).extend(
                    max(g[i][r] for g in gathered) for r in range(args.repeats))
            for (kind, nbytes), values in per_repeat_times(run.records).items():
                result["executor"].setdefault(f"{kind}:{nbytes}", []).extend(values)
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(status_dir, ignore_errors=True)
        print(json.dumps(result))
    return 0


def run_bare(args) -> dict:
    from executors.real.mpi import mpiexec_path

    cmd = [mpiexec_path(), "-n", str(args.ranks), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--collectives", args.collectives,
           "--sizes-mib", args.sizes_mib, "--rounds", str(args.rounds)]
    env = dict(os.environ)
    # The executor's launcher sets these too: one BLAS thread per rank.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        raise SystemExit(f"bare loop failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    import numpy as np

    from executors.real.mpi import MPIExecutor
    from executors.real import RealOptions

    reason = MPIExecutor.unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if args.ranks < 2 or args.repeats < 1 or args.warmup < 0 or args.rounds < 1:
        print("error: need --ranks >= 2, --repeats >= 1, --warmup >= 0, --rounds >= 1", file=sys.stderr)
        return 2
    ops = operations(args.collectives.split(","), [int(float(s) * MiB) for s in args.sizes_mib.split(",")])
    scen = scenario(args.ranks, ops)
    started = time.perf_counter()
    pooled = run_bare(args)
    if args.launched:
        executor = MPIExecutor(RealOptions(mode="native", timing="aligned", warmup=args.warmup,
                                           repeats=args.repeats))
        pooled["launched"] = {}
        for _ in range(args.rounds):
            for key, values in per_repeat_times(executor.run(scen).records).items():
                pooled["launched"].setdefault(f"{key[0]}:{key[1]}", []).extend(values)

    header = "collective nbytes executor_s bare_s overhead_pct" + (" launched_s launched_pct" if args.launched else "")
    print(f"# {args.ranks} ranks, {args.rounds} rounds x {args.repeats} repeats (warm-up {args.warmup}), "
          f"medians of the per-repeat max over ranks; {time.perf_counter() - started:.0f} s")
    print(header)
    rows = []
    for kind, nbytes in ops:
        key = f"{kind}:{nbytes}"
        ex = float(np.median(pooled["executor"][key]))
        ba = float(np.median(pooled["bare"][key]))
        row = {"collective": kind, "nbytes": nbytes, "executor_s": ex, "bare_s": ba,
               "overhead_pct": (ex - ba) / ba * 100.0}
        line = f"{kind} {nbytes} {ex:.6g} {ba:.6g} {row['overhead_pct']:+.1f}"
        if args.launched:
            row["launched_s"] = float(np.median(pooled["launched"][key]))
            row["launched_pct"] = (row["launched_s"] - ba) / ba * 100.0
            line += f" {row['launched_s']:.6g} {row['launched_pct']:+.1f}"
        rows.append(row)
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "samples": pooled}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
