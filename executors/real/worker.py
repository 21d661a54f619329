"""One rank of a launched real run: ``python -m executors.real.worker RUN_DIR``.

Started by ``executors.real.launch`` under mpiexec or torchrun; reads the scenario
and options from RUN_DIR, runs this rank, and rank 0 writes ``result.pkl``.

What this rank leaves in RUN_DIR for the launcher, which watches it:

- ``rank{R}.pid``: its process, written once the files below are in place;
- ``rank{R}.beat``: its heartbeat (``status.Heartbeat``), moving while the process runs;
- ``rank{R}.status``: the operation it is in (``status.RankStatus``, kept by the runner);
- ``rank{R}.signals``: one byte per signal it received (SIGTERM, SIGINT from its
  launcher);
- ``rank{R}.error``: why it failed, when it failed with an error of its own
  (JSON: the error and the wall-clock time in ns, to order it against others').
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
import traceback
from pathlib import Path

from executors.base import executor_class
from executors.real.options import RealOptions, RealRunError
from executors.real.runner import run_real
from executors.real.status import Heartbeat
from workloads.scenario import scenario_from_dict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m executors.real.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    options = json.loads((run_dir / "options.json").read_text())
    backend_name = options.pop("backend")
    options = RealOptions(**options)
    scenario = scenario_from_dict(json.loads((run_dir / "scenario.json").read_text()), where="scenario",
                                  max_memory_bytes=options.max_memory_bytes)
    executor = executor_class(backend_name)(options=options)
    # Announce this rank before the backend starts (MPI_Init, the torch
    # rendezvous), where the launcher's variables say which rank it is, so
    # that a rank that dies or stops while starting is watched too.
    rank = executor.announced_rank()
    heartbeat = announce(run_dir, rank) if rank is not None else None
    try:
        backend = executor.backend()
        if heartbeat is None:
            rank = backend.rank
            heartbeat = announce(run_dir, rank)
        result = run_real(backend, scenario, options, status_dir=str(run_dir))
    except BaseException as exc:  # noqa: BLE001  (any failure of this rank ends the whole run)
        what = str(exc) if isinstance(exc, RealRunError) else f"{type(exc).__name__}: {exc}"
        if rank is not None:
            _write_atomically(run_dir / f"rank{rank}.error", json.dumps({"error": what, "time_ns": time.time_ns()}))
        if not isinstance(exc, RealRunError):
            traceback.print_exc()
        print(f"rank {rank}: {what}", file=sys.stderr, flush=True)
        # Exit now: a normal exit would wait in MPI_Finalize (or the process
        # group's shutdown) for ranks that are themselves waiting for this one;
        # the launcher sees the failure and ends the others.
        os._exit(3)
    backend.close()
    if result is not None:
        tmp = run_dir / "result.pkl.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(result, fh)
        tmp.rename(run_dir / "result.pkl")
    # Exiting on purpose: the launcher must not take the stillness of
    # interpreter shutdown (MPI_Finalize) for a hang.
    heartbeat.stop()
    return 0


def announce(run_dir: Path, rank: int) -> Heartbeat:
    """Set up what the launcher watches of this rank (see the module docstring); returns its heartbeat."""
    # Python runs a signal's handler only once the main thread is back in the
    # interpreter, which a rank blocked inside MPI or gloo may never be; the
    # wakeup fd is written by the C-level handler the moment the signal
    # arrives, so the mark that this rank was ended by its launcher (and not
    # killed from outside) is there even when the handler never runs.
    signals_fd = os.open(run_dir / f"rank{rank}.signals", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK)
    signal.set_wakeup_fd(signals_fd, warn_on_full_buffer=False)

    def terminated(signum, frame):
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, terminated)
    # mpiexec (Hydra, started with -disable-auto-cleanup) tells the other ranks
    # that one failed, or exited, with SIGUSR1, whose default action would end
    # them as if they had failed too; they stay, and the launcher ends them once
    # it has taken note of which rank failed first.  Ignored, not handled: a
    # Python handler is undone while the interpreter shuts down, and a rank
    # finishing after another would die of the notice.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    heartbeat = Heartbeat(str(run_dir / f"rank{rank}.beat"))
    _write_atomically(run_dir / f"rank{rank}.pid", str(os.getpid()))
    return heartbeat


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees all of it or no file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


if __name__ == "__main__":
    raise SystemExit(main())
