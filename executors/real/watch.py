"""The ranks of a launched job as the launcher sees them: the files they keep and their processes.

``JobWatch`` reads each rank's pid, heartbeat, status, error and signals
files in the run folder (``executors.real.worker`` lists them) and its
process through /proc and a pidfd (``executors.real.procs``); it says when
the run must end (``trigger``), what it knew of each rank then
(``snapshot``: the ``RankView``s that ``executors.real.blame`` reads), and
kills the ranks.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from executors.real.blame import RankView, frozen_after_s
from executors.real.procs import (Ending, alive, open_pidfd, open_proc_file, pidfd_exit_status, proc_state,
                                  process_ending, shm_files)
from executors.real.status import read_heartbeat, read_status


@dataclass
class _Rank:
    """What the launcher keeps of one rank while the job runs."""

    pid: int | None = None
    pidfd: int | None = None
    # Its /proc/PID/stat and /proc/PID/status, kept open: a read is then a quarter of the cost.
    stat_fd: int | None = None
    status_fd: int | None = None
    gone_at: float | None = None  # the launcher's clock at the first look that found the process ended
    finished: bool = False  # ended after its program, heartbeat stopped on purpose: no failure
    started: bool = False  # past the backend's start-up (its status file exists)
    beat: int | None = None
    beat_changed_at: float = 0.0
    exit_status: int | None = None  # its wait status, as /proc showed it ending
    reaped: bool = False  # see procs.Ending


class JobWatch:
    """The ranks of one launched job, seen through the files they keep and their pids."""

    def __init__(self, run_dir: str, nranks: int, timeout_s: float):
        self.run_dir = run_dir
        self.nranks = nranks
        self.timeout_s = timeout_s
        self.ranks = [_Rank() for _ in range(nranks)]
        self._poller = select.poll() if hasattr(select, "poll") else None
        self._by_fd: dict[int, int] = {}
        # Noted once, when every rank has started: by the time a run fails,
        # mpiexec may have killed every rank, and their maps are gone.
        self._shm_seen: set[str] | None = None

    def _path(self, rank: int, suffix: str) -> Path:
        return Path(self.run_dir, f"rank{rank}.{suffix}")

    def wait(self, timeout_s: float) -> None:
        """Sleep ``timeout_s``, or less: a rank's process ending wakes it."""
        if self._poller is not None and self._by_fd:
            self._poller.poll(timeout_s * 1000.0)
        else:
            time.sleep(timeout_s)

    def look(self, now: float, files: bool = True) -> None:
        """Note the ranks that are ending; with ``files``, also read their pid, heartbeat
        and status files (a heartbeat moves every status.HEARTBEAT_S: no need to read it
        at every look)."""
        for rank, r in enumerate(self.ranks):
            if not files and r.pid is not None:
                continue
            if r.pid is None:
                r.pid = _read_pid(self._path(rank, "pid"))
                if r.pid is not None:
                    r.stat_fd, r.status_fd = open_proc_file(r.pid, "stat"), open_proc_file(r.pid, "status")
                    r.pidfd = open_pidfd(r.pid)
                    if r.pidfd is not None and self._poller is not None:
                        self._poller.register(r.pidfd, select.POLLIN)
                        self._by_fd[r.pidfd] = rank
            beat = read_heartbeat(self._path(rank, "beat"))
            if beat != r.beat:
                r.beat, r.beat_changed_at = beat, now
            if not r.started and self._path(rank, "status").exists():
                r.started = True
        if files and self._shm_seen is None and all(r.started and r.gone_at is None for r in self.ranks):
            self._shm_seen = self.shared_memory()
        ending = self._ending({})
        if ending:
            # A rank read before one found ending may have begun to end after
            # it; what still runs on a second reading began to end after all
            # of these: one group, ordered by how and when each ended (``blame``).
            ending = self._ending(ending)
            for rank, how in ending.items():
                self._gone(rank, now, how)

    def _ending(self, found: dict[int, Ending]) -> dict[int, Ending]:
        """``found`` plus the ranks whose process is ending or gone."""
        found = dict(found)
        ready = set()
        if self._poller is not None and self._by_fd:
            ready = {self._by_fd[fd] for fd, _ in self._poller.poll(0) if fd in self._by_fd}
        for rank, r in enumerate(self.ranks):
            if r.pid is None or r.gone_at is not None or rank in found:
                continue
            how = process_ending(r.pid, r.stat_fd, r.status_fd)
            if how is None and rank in ready:
                how = Ending(None, False)
            if how is not None:
                found[rank] = how
        return found

    def _gone(self, rank: int, now: float, how: Ending) -> None:
        r = self.ranks[rank]
        r.gone_at = now
        r.exit_status, r.reaped = how.exit_status, how.reaped
        if r.pidfd is not None and self._poller is not None and r.pidfd in self._by_fd:
            self._poller.unregister(r.pidfd)  # readable from now on: it would wake every wait
            self._by_fd.pop(r.pidfd, None)
        # Its heartbeat at 0 says it stopped beating on purpose, on its way out after its program.
        r.finished = read_status(self._path(rank, "status")) == "done" and read_heartbeat(self._path(rank, "beat")) == 0

    def trigger(self, now: float) -> str | None:
        """Why the run must end now, or None."""
        for rank, r in enumerate(self.ranks):
            if r.gone_at is not None and not r.finished:
                return f"rank {rank} ended"
            if r.started and r.beat and now - r.beat_changed_at >= self.timeout_s:
                return f"rank {rank}'s heartbeat stood still for {self.timeout_s:g} s"
        return None

    def snapshot(self, now: float) -> list[RankView]:
        views = []
        for rank, r in enumerate(self.ranks):
            error, error_time_ns = _read_error(self._path(rank, "error"))
            try:
                signals = self._path(rank, "signals").read_bytes()
            except FileNotFoundError:
                signals = b""
            running = r.pid is not None and r.gone_at is None
            views.append(RankView(
                rank=rank, status=read_status(self._path(rank, "status")), error=error, error_time_ns=error_time_ns,
                signals=signals, gone_at=r.gone_at if not r.finished else None,
                proc_state=proc_state(r.pid) if running else None,
                beat_age_s=now - r.beat_changed_at if running and r.beat else None, started=r.started,
                reaped=r.reaped, frozen_after_s=frozen_after_s(self.timeout_s),
            ))
            if r.finished:
                views[-1].status = "done"
        return views

    def shared_memory(self) -> set[str]:
        """Files in /dev/shm that the running ranks have mapped (MPI's node-local segments):
        those seen once every rank had started, and those mapped now."""
        found = set(self._shm_seen or ())
        for r in self.ranks:
            if r.pid is not None and r.gone_at is None:
                found |= shm_files(r.pid)
        return found

    def kill_ranks(self) -> None:
        for r in self.ranks:
            if r.pid is None:
                continue
            try:
                if r.pidfd is not None:
                    signal.pidfd_send_signal(r.pidfd, signal.SIGKILL)
                elif alive(r.pid):
                    os.kill(r.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_gone(self, timeout_s: float) -> None:
        """Until no rank's process runs any more (a killed process still needs a moment to go)."""
        deadline = time.monotonic() + timeout_s
        for r in self.ranks:
            while r.pid is not None and time.monotonic() < deadline:
                if r.pidfd is not None:
                    if select.select([r.pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                        break
                elif not alive(r.pid):
                    break
                else:
                    time.sleep(0.01)

    def add_exit_status(self, views: list[RankView]) -> None:
        """The exit status of each rank that had ended when the run failed, where the kernel tells it."""
        for view, r in zip(views, self.ranks):
            if view.gone_at is not None:
                status = r.exit_status
                if status is None and r.pidfd is not None:
                    status = pidfd_exit_status(r.pidfd)
                if status is not None:
                    if os.WIFSIGNALED(status):
                        view.exit_signal = os.WTERMSIG(status)
                    elif os.WIFEXITED(status):
                        view.exit_code = os.WEXITSTATUS(status)

    def close(self) -> None:
        for r in self.ranks:
            for fd in (r.pidfd, r.stat_fd, r.status_fd):
                if fd is not None:
                    os.close(fd)
            r.pidfd = r.stat_fd = r.status_fd = None
        self._by_fd.clear()


def signs_of_life(run_dir: str, seen: dict) -> bool:
    """True when some rank's status changed since the last look (its sequence number moves)."""
    changed = False
    for path in Path(run_dir).glob("rank*.status"):
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            continue
        if seen.get(path.name) != text:
            seen[path.name] = text
            changed = True
    return changed


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _read_error(path: Path) -> tuple[str | None, int | None]:
    try:
        data = json.loads(path.read_text())
        return str(data["error"]).strip(), int(data["time_ns"])
    except FileNotFoundError:
        return None, None
    except (ValueError, KeyError, TypeError):
        return path.read_text(errors="replace").strip(), None
