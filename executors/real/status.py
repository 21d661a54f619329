"""Each rank's status file: where it is, readable by the launcher while it runs."""
from __future__ import annotations

import mmap

STATUS_BYTES = 96


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
            text = fh.read().decode(errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text.rsplit(" #", 1)[0] if " #" in text else text
