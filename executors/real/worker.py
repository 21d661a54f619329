"""One rank of a launched real run: ``python -m executors.real.worker RUN_DIR``.

Started by ``executors.real.launch`` under mpiexec or torchrun; reads the scenario
and options from RUN_DIR, runs this rank, and rank 0 writes ``result.pkl``.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import traceback
from pathlib import Path

from executors.base import executor_class
from executors.real.options import RealOptions, RealRunError
from executors.real.runner import run_real
from workloads.scenario import scenario_from_dict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m executors.real.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    options = json.loads((run_dir / "options.json").read_text())
    backend_name = options.pop("backend")
    scenario = scenario_from_dict(json.loads((run_dir / "scenario.json").read_text()), where="scenario")
    options = RealOptions(**options)
    backend = executor_class(backend_name)(options=options).backend()
    # The launcher watches this process: if it vanishes, this rank died.
    (run_dir / f"rank{backend.rank}.pid").write_text(str(os.getpid()))
    marker = run_dir / f"rank{backend.rank}.terminated"

    def terminated(signum, frame):
        # Ended by the launcher (mpiexec, torchrun) because another rank failed:
        # say so, so that the rank that really failed is the one named.
        marker.write_text(signal.Signals(signum).name)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, terminated)
    try:
        result = run_real(backend, scenario, options, status_dir=str(run_dir))
    except BaseException as exc:  # noqa: BLE001  (any failure of this rank ends the whole run)
        what = str(exc) if isinstance(exc, RealRunError) else f"{type(exc).__name__}: {exc}"
        (run_dir / f"rank{backend.rank}.error").write_text(f"{what}\n")
        if not isinstance(exc, RealRunError):
            traceback.print_exc()
        print(f"rank {backend.rank}: {what}", file=sys.stderr, flush=True)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
