"""Each rank's status and heartbeat files: where it is and that it still runs, readable by the launcher."""
from __future__ import annotations

import mmap
import threading

STATUS_BYTES = 96
# How often a rank's heartbeat moves.  Often enough that the launcher tells a
# stopped rank from a running one well within a second, rarely enough to cost
# nothing (one store into a mapped page).
HEARTBEAT_S = 0.1
BEAT_BYTES = 8


class RankStatus:
    """Where a rank is (``op 12 allreduce #40``), readable by the launcher while it runs.

    A small memory-mapped file: setting it is a memory store, not a system
    call, so keeping it current before every operation costs nothing that
    shows in the times measured.  The sequence number tells the launcher the
    rank is alive.
    """

    def __init__(self, path: str | None):
        self._mm = None
        self.seq = 0
        if path:
            with open(path, "wb") as fh:
                fh.write(b" " * STATUS_BYTES)
            with open(path, "r+b") as fh:
                self._mm = mmap.mmap(fh.fileno(), STATUS_BYTES)

    def set(self, text: str) -> None:
        if self._mm is not None:
            self.seq += 1
            self._mm[:] = f"{text} #{self.seq}".encode()[:STATUS_BYTES].ljust(STATUS_BYTES)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.flush()
            self._mm.close()
            self._mm = None


def read_status(path) -> str:
    """A status file's text without its sequence number ('' when it has none)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(STATUS_BYTES).decode(errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text.rsplit(" #", 1)[0] if " #" in text else text


class Heartbeat:
    """A counter in a small memory-mapped file that a daemon thread raises every
    ``HEARTBEAT_S`` for as long as the process runs.

    A thread, not the rank's main loop, so that a rank that is merely busy (a
    long compute, or blocked in an MPI or gloo call: numpy, mpi4py and torch
    release the GIL there) still beats, while a stopped (SIGSTOP) or frozen
    process cannot: the launcher names the rank whose heartbeat stands still
    as the one that hung, not the ranks that time out waiting for it.
    ``stop`` writes 0: "no longer beating on purpose" (the rank is exiting).
    """

    def __init__(self, path: str, period_s: float = HEARTBEAT_S):
        with open(path, "wb") as fh:
            fh.write(bytes(BEAT_BYTES))
        with open(path, "r+b") as fh:
            self._mm = mmap.mmap(fh.fileno(), BEAT_BYTES)
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distsim-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        count = 0
        while True:
            count += 1
            self._mm[:] = count.to_bytes(BEAT_BYTES, "little")
            if self._stop.wait(self._period_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._mm[:] = bytes(BEAT_BYTES)
        self._mm.close()


def read_heartbeat(path) -> int | None:
    """A heartbeat file's counter: None when there is none yet, 0 once the rank stopped it on purpose."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(BEAT_BYTES)
    except FileNotFoundError:
        return None
    return int.from_bytes(data, "little") if len(data) == BEAT_BYTES else None
