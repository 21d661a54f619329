"""Start the ranks of a job one command each: ``python -m executors.real.spawn SPEC.json``.

The launcher of a run on an emulated network, where torchrun cannot serve:
each rank must start inside its own namespace (``ip netns exec NS python
-m executors.real.worker RUN_DIR``) with the environment torchrun would give
it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and its
interface.  SPEC.json is a list of ``{"argv": [...], "env": {...}}``, one
per rank; each ``env`` is added to this process's environment.

The ranks share this process's session, so ``executors.real.launch`` ends
them all with it; it waits for every rank and exits with the first
non-zero code among them (0 when all succeed).  SIGTERM and SIGINT are
passed on to the ranks, as torchrun does (a rank notes them, see
``executors.real.worker``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m executors.real.spawn SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    children: list[subprocess.Popen] = []

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for rank in spec:
        children.append(subprocess.Popen(rank["argv"], env={**os.environ, **rank["env"]}, stdin=subprocess.DEVNULL))
    codes = [child.wait() for child in children]
    # A rank ended by a signal reports as a shell would: 128 + the signal.
    return next((128 - code if code < 0 else code for code in codes if code != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main())
