"""Does a failed real run name exactly the rank that failed, and end in time?

    python benchmarks/blame_trials.py [--mpi-killed 20] [--mpi-stopped 10] [--torch-killed 5]
        [--torch-stopped 5] [--timeout 5] [--seed 0] [--mpi-ranks 4] [--torch-ranks 2]
        [--window 2] [--nbytes 262144] [--scenario FILE] [--json OUT]

Each trial launches a run (``executors.real.launch.launch``), waits until
every rank is inside its operations, sleeps a random time in [0, --window] s,
and then signals a random rank from outside, with ``os.kill`` on the pid it
wrote to ``RUN_DIR/rank{R}.pid`` (the launcher's ``on_start`` hook gives
RUN_DIR): SIGKILL for "killed", SIGSTOP for "stopped".  Rank and moment
come from one ``numpy.random.Generator`` seeded with --seed.

A trial is exact when the error's first line names the signalled rank as the
one that died ("rank R died") or hung ("rank R hung"), and every other rank's
line says it stopped because of that rank ("stopped by the launcher after
rank R failed", "stopped after rank R failed", "waiting ... for the hung
rank") or finished: no other rank is said to have failed on its own.  Its
time is from the signal to the moment ``launch`` raised; a stopped rank's run
should end within --timeout (the per-operation timeout) plus 5 s.  After each
trial no worker process of the run may remain: one that does is counted,
continued and killed.

The scenario: --scenario FILE, or by default a programs scenario of
compute, a ring exchange and an all-gather of --nbytes (256 KiB) and an
all-reduce of 4 x --nbytes, repeated enough to outlast the signal.  Above
MPICH's 8 KiB single-copy size a rank killed while a peer copies from its
memory makes that peer abort, and mpiexec then kills every rank at once:
the race the launcher must win to tell who went first.  Prints one line per
trial, then per backend and kind: exact/total, and max and median seconds
from the signal to the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from executors import executor_class  # noqa: E402
from executors.real import RealOptions, RealRunError, read_status  # noqa: E402
from executors.real.launch import launch  # noqa: E402
from workloads.scenario import load_scenario, scenario_from_dict  # noqa: E402

SIGNALS = {"killed": signal.SIGKILL, "stopped": signal.SIGSTOP}
# How long a trial may wait for every rank to be inside its operations (torchrun on 2 busy cores: ~10 s).
START_LIMIT_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Signal a random rank of a real run; is it the one named? (see the docstring)")
    p.add_argument("--mpi-killed", type=int, default=20, help="MPI trials with a SIGKILLed rank (default 20)")
    p.add_argument("--mpi-stopped", type=int, default=10, help="MPI trials with a SIGSTOPped rank (default 10)")
    p.add_argument("--torch-killed", type=int, default=5, help="torch trials with a SIGKILLed rank (default 5)")
    p.add_argument("--torch-stopped", type=int, default=5, help="torch trials with a SIGSTOPped rank (default 5)")
    p.add_argument("--timeout", type=float, default=5.0, help="the runs' per-operation timeout_s (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ranks and moments (default 0)")
    p.add_argument("--mpi-ranks", type=int, default=4, help="ranks of the default scenario on MPI (default 4)")
    p.add_argument("--torch-ranks", type=int, default=2, help="ranks of the default scenario on torch (default 2)")
    p.add_argument("--window", type=float, default=2.0,
                   help="signal at a uniform random moment this many seconds after all ranks started (default 2)")
    p.add_argument("--nbytes", type=int, default=262144, help="message size of the default scenario (default 262144)")
    p.add_argument("--scenario", help="a scenario file to run instead of the default (2-4 ranks)")
    p.add_argument("--repeats", type=int, default=1000,
                   help="repeats of the scenario, enough to outlast the signal (default 1000)")
    p.add_argument("--json", help="also write every trial to this JSON file")
    return p


def default_scenario(nranks: int, steps: int = 10, nbytes: int = 262144):
    """Per step: compute, a ring exchange of ``nbytes`` (even ranks send first), an all-reduce
    of 4 x ``nbytes`` and an all-gather of ``nbytes``."""
    if nranks < 2 or nranks % 2:
        raise ValueError(f"the default scenario needs an even number of ranks >= 2, got {nranks}")
    ranks = []
    for r in range(nranks):
        send = {"kind": "send", "peer": (r + 1) % nranks, "nbytes": nbytes}
        recv = {"kind": "recv", "peer": (r - 1) % nranks, "nbytes": nbytes}
        step = [{"kind": "compute", "flops": 5.0e7}] + ([send, recv] if r % 2 == 0 else [recv, send])
        step += [{"kind": "allreduce", "nbytes": 4 * nbytes}, {"kind": "allgather", "nbytes": nbytes}]
        ranks.append(step * steps)
    return scenario_from_dict({"name": f"blame-trials-{nranks}", "topology": {"builder": "switch", "n": nranks},
                               "workload": {"kind": "programs", "ranks": ranks}}, where="blame-trials")


def worker_processes(run_dir: str) -> list[int]:
    """Pids of live (not zombie) processes running a worker of ``run_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if os.fsencode(run_dir) in args and b"executors.real.worker" in args and state != "Z":
            found.append(int(entry.name))
    return found


class _Process:
    """A process to signal, held by a pidfd where there are pidfds (Linux), else by its pid."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.fd = None

    def send(self, sig: int) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _running_ops(run_dir: str, nranks: int) -> list[int] | None:
    """The ranks' pids once every rank is inside its operations, else None."""
    pids = []
    for rank in range(nranks):
        try:
            pid = int(Path(run_dir, f"rank{rank}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not read_status(Path(run_dir, f"rank{rank}.status")).startswith("op "):
            return None
        pids.append(pid)
    return pids


def judge(message: str, backend: str, rank: int, kind: str) -> bool:
    """True when ``message`` names exactly ``rank`` as the one that failed (see the docstring)."""
    lines = message.splitlines()
    verb = "died" if kind == "killed" else "hung"
    if not lines or not lines[0].startswith(f"{backend} run failed: rank {rank} {verb} "):
        return False
    for line in lines[1:]:
        line = line.strip()
        if line.startswith("last lines of the ranks' stderr"):
            break
        if not line.startswith("rank "):
            continue
        innocent = (f"after rank {rank} failed" in line and line.split(": ", 1)[1].startswith("stopped")) \
            or ("for the hung rank" in line and line.split(": ", 1)[1].startswith("waiting")) \
            or line.endswith(": finished its program")
        if not innocent:
            return False
    return True


def trial(backend: str, scenario, options: RealOptions, kind: str, rng: np.random.Generator,
          window_s: float) -> dict:
    """One run with one rank signalled from outside; what it reported, and how fast."""
    cls = executor_class(backend)
    nranks = scenario.nranks
    delay_s = float(rng.uniform(0.0, window_s))
    target = int(rng.integers(nranks))
    box: dict = {"run_dir": None, "pids": None, "signalled_at": None}

    def signal_one():
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and box.get("ended") is None:
            pids = _running_ops(box["run_dir"], nranks)
            if pids is not None:
                # Through pidfds: a pid read from a file could name another process once it is reused.
                box["pids"] = [_Process(pid) for pid in pids]
                time.sleep(delay_s)
                if box.get("ended") is None:
                    box["signalled_at"] = time.monotonic()
                    box["pids"][target].send(SIGNALS[kind])
                return
            time.sleep(0.01)

    def on_start(run_dir: str) -> None:
        box["run_dir"] = run_dir
        box["thread"] = threading.Thread(target=signal_one, daemon=True)
        box["thread"].start()

    message = None
    try:
        launch(cls, scenario, options, on_start=on_start, timeout_s=options.timeout_s + START_LIMIT_S)
    except RealRunError as exc:
        message = str(exc)
    box["ended"] = ended = time.monotonic()
    box["thread"].join()
    leftovers = worker_processes(box["run_dir"])
    # Nothing may be left, a stopped rank least of all: continue and kill whatever is.
    for process in [_Process(pid) for pid in leftovers] + (box["pids"] or []):
        process.send(signal.SIGCONT)
        process.send(signal.SIGKILL)
        process.close()
    signalled = box["signalled_at"] is not None
    return {
        "backend": backend, "kind": kind, "rank": target, "delay_s": round(delay_s, 3), "signalled": signalled,
        "exact": signalled and message is not None and judge(message, backend, target, kind),
        "seconds": round(ended - box["signalled_at"], 3) if signalled else None,
        "leftovers": len(leftovers), "message": message,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rng = np.random.default_rng(args.seed)
    plan = [("mpi", "killed", args.mpi_killed), ("mpi", "stopped", args.mpi_stopped),
            ("torch", "killed", args.torch_killed), ("torch", "stopped", args.torch_stopped)]
    options = RealOptions(warmup=0, repeats=args.repeats, timeout_s=args.timeout)
    trials: list[dict] = []
    for backend, kind, count in plan:
        if count <= 0:
            continue
        reason = executor_class(backend).unavailable_reason()
        if reason:
            print(f"{backend}: skipped ({reason})")
            continue
        ranks = args.mpi_ranks if backend == "mpi" else args.torch_ranks
        scenario = load_scenario(args.scenario) if args.scenario else default_scenario(ranks, nbytes=args.nbytes)
        for i in range(count):
            t = trial(backend, scenario, options, kind, rng, args.window)
            trials.append(t)
            took = f"{t['seconds']:.2f} s" if t["seconds"] is not None else "not signalled (the run ended first)"
            print(f"{backend} {kind} #{i + 1}: rank {t['rank']} after {t['delay_s']:.2f} s: "
                  f"{'exact' if t['exact'] else 'WRONG'}, {took}, leftovers {t['leftovers']}", flush=True)
            if not t["exact"] and t["message"]:
                print("    " + "\n    ".join(t["message"].splitlines()[:8]), flush=True)
    print()
    print(f"{'backend':8} {'kind':8} {'exact':>7} {'max_s':>7} {'median_s':>9} {'leftovers':>9}  (timeout {args.timeout:g} s)")
    for backend, kind, _ in plan:
        group = [t for t in trials if t["backend"] == backend and t["kind"] == kind]
        if not group:
            continue
        seconds = [t["seconds"] for t in group if t["seconds"] is not None]
        exact = sum(t["exact"] for t in group)
        print(f"{backend:8} {kind:8} {exact:>3}/{len(group):<3} {max(seconds, default=float('nan')):7.2f} "
              f"{statistics.median(seconds) if seconds else float('nan'):9.2f} {sum(t['leftovers'] for t in group):9d}")
    if args.json:
        Path(args.json).write_text(json.dumps(trials, indent=1))
    return 0 if all(t["exact"] and not t["leftovers"] for t in trials) else 1


if __name__ == "__main__":
    raise SystemExit(main())
