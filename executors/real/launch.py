"""Launch a real run from a plain process, make sure it ends, and say which rank made it fail.

``launch(executor_class, scenario, options)`` writes the scenario to a
temporary folder, starts the backend's launcher (``mpiexec -n N``,
``torchrun --nproc-per-node N``: the class's ``launch_command``) on
``python -m executors.real.worker`` in a session of its own, and watches the
ranks through the files they keep there (``executors.real.worker`` lists them).

The run ends at the first failure, within ``options.timeout_s`` of it: when a
rank's process ends before it finished its program, when a rank's heartbeat
has stood still for ``timeout_s`` (stopped, or frozen), or when a rank's
watchdog ends it after ``timeout_s`` in one operation.  The launcher then
notes every rank's state, kills the whole job itself (the ranks' own
processes, which torchrun puts in sessions of their own, then the launcher's
process group; mpiexec's and torchrun's own shutdown can wait half a minute
for a rank that does not answer) and names the rank that failed first, and
how; the others are named as stopped because of it.  No process is left
behind, and the folder is removed unless ``keep_dir``.

Which rank failed first.  The launcher looks every 10 ms (and wakes at
once when a rank's process ends, through a pidfd); a process counts as
ending from the moment SIGKILL is pending on it or it begins to exit (both
in /proc), before its peers can notice anything.  Still, two ranks can end
between two looks: the one that failed and one that its failure brought
down.  So the order of the looks is not all it relies on:

- nobody else kills a rank silently.  mpiexec (Hydra) runs with
  ``-disable-auto-cleanup``, so it only sends the other ranks SIGUSR1, which
  they ignore; torchrun ends them with SIGTERM, which they note the moment
  it arrives (``rank{R}.signals``); the launcher itself kills only
  after it noted who failed.  A rank whose process ended without an error
  of its own and without such a mark was killed from outside or crashed:
  that is a cause, not a consequence.
- a rank that failed with an error of its own wrote it with the time; a
  peer's failure can make other ranks fail in turn (gloo reports the closed
  connection), always later, so among errors the earliest is the cause.
  One that exits with a code but no error file (MPICH aborting on a failed
  shared-memory copy from a dead peer) comes after those killed outright.
- the exception: MPICH aborts when a shared-memory copy from the dead
  rank fails, and Hydra then kills every rank at once, silently.  When that
  lands between two looks, one thing still tells the order: a process that
  its parent already reaped died before any sibling still a zombie (a
  parent reaps all the zombies it finds).  Where it does not tell, all the
  ranks found dead at that look are named.  (Which process last ran when,
  in /proc/PID/sched, is no help: each CPU's clock there has its own offset.)
- a rank that stopped (SIGSTOP) or froze shows a heartbeat that stands
  still, and on Linux the process state 'T'; ranks that time out waiting
  for it are named as waiting, not as the cause.

The exit status of a rank that ended (killed by SIGKILL, exit code 3) comes
from /proc while the process is still there, else from its pidfd where the
kernel keeps it (Linux 6.15 and later): the launcher is not the ranks'
parent and cannot wait for them.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from executors.real.options import RealOptions, RealRunError
from executors.real.status import HEARTBEAT_S, read_heartbeat, read_status

START_GRACE_S = 60.0
# A rank that is stopped (process state 'T') when the run fails is named as
# hung; one that still runs, by the kernel's account, only once its heartbeat
# (every status.HEARTBEAT_S) stood still for half the timeout, and at least
# this long: a loaded machine can delay a beat by far more than its period.
FROZEN_AFTER_S = 1.0


def frozen_after_s(timeout_s: float) -> float:
    return max(FROZEN_AFTER_S, timeout_s / 2.0)
# How long the launcher (mpiexec, torchrun) gets to end what it started
# once the ranks are killed, before its whole process group is killed.
CLEANUP_GRACE_S = 1.0
# Signals that mean "ended by its launcher" (torchrun sends SIGTERM; Ctrl-C is SIGINT).
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def scenario_for_workers(scenario) -> dict:
    """The scenario as self-contained plain data (``to_dict`` writes the topology explicitly)."""
    data = scenario.to_dict()
    # A real run ignores the simulated machine.
    data.pop("profile", None)
    return data


def launch(executor_class, scenario, options: RealOptions, *, hostfile: str | None = None,
           timeout_s: float | None = None, keep_dir: bool = False,
           on_start: Callable[[str], None] | None = None, network=None):
    """Run ``scenario`` for real with the backend of ``executor_class`` (a ``RealExecutor``
    subclass, as the registry gives it); return rank 0's RunResult.

    ``on_start``, if given, is called with the run folder once the job has
    started: a hook for tests and benchmarks that act on the ranks from
    outside (their pids appear there as ``rank{R}.pid``).  It runs in the
    launcher's thread, so it must return at once.  ``network``: an
    ``executors.emulation.EmulatedNetwork``, built, whose namespaces the ranks
    start in (the class's ``emulated_launch_command``).
    """
    backend = executor_class.name
    run_dir = tempfile.mkdtemp(prefix=f"distsim-{backend}-")
    try:
        Path(run_dir, "scenario.json").write_text(json.dumps(scenario_for_workers(scenario)))
        Path(run_dir, "options.json").write_text(json.dumps({**options.to_dict(), "backend": backend}))
        if hostfile and not Path(hostfile).is_file():
            raise RealRunError(f"hostfile {hostfile}: no such file")
        module_args = ["executors.real.worker", run_dir]
        if network is None:
            cmd = executor_class.launch_command(scenario.nranks, module_args, hostfile)
        else:
            cmd = executor_class.emulated_launch_command(scenario.nranks, module_args, network, run_dir)
        env = dict(os.environ)
        # N ranks on one machine share its cores: one BLAS thread each unless
        # the user says otherwise.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        stdout = open(Path(run_dir, "stdout.txt"), "w")
        stderr = open(Path(run_dir, "stderr.txt"), "w")
        started_wall_s = time.time()
        try:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as exc:
            raise RealRunError(f"cannot start {cmd[0]}: {exc.strerror or exc}") from None
        finally:
            stdout.close()
            stderr.close()
        watch = _JobWatch(run_dir, scenario.nranks, options.timeout_s)
        try:
            return _watch_job(proc, watch, backend, options, timeout_s, started_wall_s, on_start)
        finally:
            watch.close()
    finally:
        if not keep_dir:
            _remove(run_dir)


def _watch_job(proc: subprocess.Popen, watch: "_JobWatch", backend: str, options: RealOptions,
               timeout_s: float | None, started_wall_s: float, on_start):
    run_dir = watch.run_dir
    silent_limit_s = options.timeout_s + START_GRACE_S
    started = last_life = last_look = last_files = time.monotonic()
    # Often, and cheaply (a pidfd poll and a read of each rank's /proc/PID/stat,
    # some 40 us for 4 ranks): the sooner a rank is seen ending, the less likely
    # what its death brings about (an abort, mpiexec killing the rest) lands in
    # the same look.  Not more often: the launcher shares the cores with the
    # ranks it measures (at 5 ms it took 4% of a core over a 4-rank run, at 10
    # ms about the 3% the launcher took before it looked for all this).
    poll_s = 0.01 if watch.nranks <= 16 else 0.02 if watch.nranks <= 64 else 0.1
    seen: dict = {}
    reason = trigger = None
    try:
        if on_start is not None:
            on_start(run_dir)
        while proc.poll() is None:
            watch.wait(poll_s)
            now = time.monotonic()
            files = now - last_files >= HEARTBEAT_S
            if files:
                last_files = now
            watch.look(now, files)
            if now - last_look >= 0.5:
                last_look = now
                if _signs_of_life(run_dir, seen):
                    last_life = now
            trigger = watch.trigger(now)
            if trigger:
                break
            if timeout_s is not None and now - started > timeout_s:
                reason = f"the run took longer than {timeout_s:g} s"
                break
            if now - last_life > silent_limit_s:
                reason = f"no rank started a new operation for {silent_limit_s:g} s"
                break
    except BaseException:
        # Ctrl-C (or any error here): the job is in a session of its own,
        # so the terminal's signal never reached it; end it before leaving.
        _end_job(proc, watch, started_wall_s)
        raise
    code = proc.poll()
    result_path = Path(run_dir, "result.pkl")
    if trigger is None and reason is None:
        code = proc.wait()
        if code == 0 and result_path.exists():
            with open(result_path, "rb") as fh:
                return pickle.load(fh)
        # The launcher ended on its own with a failure: one last look, for
        # ranks that ended since the previous one.
        watch.look(time.monotonic())
    views = watch.snapshot(time.monotonic())
    # What the ranks said up to now: once killed, the launchers add their own
    # account of the signal (torchrun a traceback), which says nothing of the run.
    stderr_tail = _tail(Path(run_dir, "stderr.txt"))
    _end_job(proc, watch, started_wall_s)
    watch.add_exit_status(views)
    raise RealRunError(failure_message(backend, views, options.timeout_s, code=code, reason=reason,
                                       stderr_tail=stderr_tail))


def _tail(path: Path, lines: int = 12) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.strip().splitlines()[-lines:]


# -- watching the ranks ---------------------------------------------------------------


@dataclass
class _Rank:
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
    reaped: bool = False  # see _Ending


@dataclass
class RankView:
    """What the launcher knew of one rank when the run failed."""

    rank: int
    status: str  # "op 7 allreduce", "timeout 3 recv", "died 0 allreduce", "done", "" (not started)
    error: str | None
    error_time_ns: int | None
    signals: bytes  # signals it received, one byte each
    gone_at: float | None  # None: still running when the launcher killed it
    proc_state: str | None  # /proc state letter while running ('T': stopped), None where unknown
    beat_age_s: float | None  # how long its heartbeat had stood still, None if it was not beating
    started: bool
    exit_signal: int | None = None
    exit_code: int | None = None
    reaped: bool = False  # already reaped when found ended: it died before the siblings that were not
    frozen_after_s: float = FROZEN_AFTER_S  # frozen_after_s(the run's timeout)

    @property
    def ended_by_launcher(self) -> bool:
        return any(sig in self.signals for sig in _ENDING_SIGNALS) or self.exit_signal == signal.SIGUSR1

    @property
    def stopped(self) -> bool:
        """Still there but not running: stopped (SIGSTOP), or its heartbeat stood still."""
        if self.gone_at is not None:
            return False
        if self.proc_state in ("T", "t"):
            return True
        return self.started and self.beat_age_s is not None and self.beat_age_s >= self.frozen_after_s


class _JobWatch:
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
                    r.stat_fd, r.status_fd = _open_proc(r.pid, "stat"), _open_proc(r.pid, "status")
                    r.pidfd = _pidfd(r.pid)
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

    def _ending(self, found: dict[int, _Ending]) -> dict[int, _Ending]:
        """``found`` plus the ranks whose process is ending or gone."""
        found = dict(found)
        ready = set()
        if self._poller is not None and self._by_fd:
            ready = {self._by_fd[fd] for fd, _ in self._poller.poll(0) if fd in self._by_fd}
        for rank, r in enumerate(self.ranks):
            if r.pid is None or r.gone_at is not None or rank in found:
                continue
            how = _ending(r.pid, r.stat_fd, r.status_fd)
            if how is None and rank in ready:
                how = _Ending(None, False)
            if how is not None:
                found[rank] = how
        return found

    def _gone(self, rank: int, now: float, how: _Ending) -> None:
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
                proc_state=_proc_state(r.pid) if running else None,
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
                found |= _shm_files(r.pid)
        return found

    def kill_ranks(self) -> None:
        for r in self.ranks:
            if r.pid is None:
                continue
            try:
                if r.pidfd is not None:
                    signal.pidfd_send_signal(r.pidfd, signal.SIGKILL)
                elif _alive(r.pid):
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
                elif not _alive(r.pid):
                    break
                else:
                    time.sleep(0.01)

    def add_exit_status(self, views: list[RankView]) -> None:
        """The exit status of each rank that had ended when the run failed, where the kernel tells it."""
        for view, r in zip(views, self.ranks):
            if view.gone_at is not None:
                status = r.exit_status
                if status is None and r.pidfd is not None:
                    status = _pidfd_exit_status(r.pidfd)
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


def _signs_of_life(run_dir: str, seen: dict) -> bool:
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


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3 and later): it becomes readable when the process ends."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


# PIDFD_GET_INFO (Linux 6.13; the exit status in it since 6.15):
# _IOWR(0xFF, 11, struct pidfd_info), its first 64 bytes; exit_code at byte 60.
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3


def _pidfd_exit_status(pidfd: int) -> int | None:
    """The wait status of the ended process of ``pidfd`` (once its parent reaped it), or None."""
    buf = bytearray(64)
    struct.pack_into("=Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf)
    except OSError:
        return None
    mask, = struct.unpack_from("=Q", buf, 0)
    return struct.unpack_from("=i", buf, 60)[0] if mask & _PIDFD_INFO_EXIT else None


_PF_EXITING = 0x4  # linux/sched.h: the process has begun to exit (a fatal signal, or exit())


@dataclass
class _Ending:
    exit_status: int | None  # its wait status, where /proc still shows it
    reaped: bool  # already reaped by its parent: it died before any sibling that is not


def _open_proc(pid: int, name: str) -> int | None:
    try:
        return os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /proc (macOS), or the process is already gone
        return None


def _ending(pid: int, stat_fd: int | None, status_fd: int | None) -> _Ending | None:
    """How the process is ending, or None while it runs (``stat_fd``, ``status_fd``: its
    /proc/PID/stat and /proc/PID/status).

    Ending, not only ended: a process killed with SIGKILL first waits for a
    core to take the signal, then tears down its memory, closes its files,
    and only then turns zombie; its peers notice the memory and the files
    going (a shared-memory copy from it fails, its sockets close) and may
    fail, and be killed, before it is a zombie.  From the kill on, SIGKILL
    is pending (SigPnd); once taken, the flag PF_EXITING is set.
    """
    if stat_fd is None:
        return None if _alive(pid) else _Ending(None, False)
    try:
        fields = os.pread(stat_fd, 4096, 0).rsplit(b")", 1)[1].split()
    except (OSError, IndexError):  # ESRCH once its parent reaped it
        return _Ending(None, True)
    state, flags = fields[0].decode(), int(fields[6])
    if state in ("Z", "X", "x") or flags & _PF_EXITING:
        # exit_code (field 52, Linux 3.5 and later), set just after PF_EXITING: 0 may be "not yet".
        exit_status = int(fields[49]) if len(fields) > 49 else None
        if exit_status == 0 and state not in ("Z", "X", "x"):
            exit_status = None
        return _Ending(exit_status, False)
    if status_fd is not None and _sigkill_pending(status_fd):
        return _Ending(signal.SIGKILL, False)
    return None


def _sigkill_pending(status_fd: int) -> bool:
    try:
        text = os.pread(status_fd, 8192, 0)
    except OSError:
        return False
    for key in (b"\nSigPnd:", b"\nShdPnd:"):
        at = text.find(key)
        if at >= 0 and int(text[at + len(key):].split(None, 1)[0], 16) & (1 << (signal.SIGKILL - 1)):
            return True
    return False


def _alive(pid: int) -> bool:
    if os.path.isdir("/proc/self"):
        state = _proc_state(pid)
        # A killed child waiting to be reaped by its launcher is a zombie ('Z').
        return state is not None and state != "Z"
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _proc_state(pid: int | None) -> str | None:
    """The process's state letter from /proc ('R', 'S', 'T' stopped, 'Z' zombie...), None where unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _shm_files(pid: int) -> set[str]:
    found = set()
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/dev/shm/") and not fields[5].rstrip().endswith(
                        "(deleted)"):
                    found.add(fields[5].rstrip())
    except OSError:
        pass
    return found


# -- ending a job -----------------------------------------------------------------


def _end_job(proc: subprocess.Popen, watch: _JobWatch, started_wall_s: float) -> None:
    """Kill every process of the job and wait until they are gone."""
    # MPI's shared-memory segments live until the last rank finalizes: a
    # killed job leaves them in /dev/shm.  Those the ranks have mapped and
    # that appeared during this run are the job's own.
    shm = watch.shared_memory()
    # The ranks first and with SIGKILL (a stopped process too): a rank blocked
    # inside MPI or gloo may never run a SIGTERM handler.
    watch.kill_ranks()
    # Then the launcher, which can end what else it started (processes on
    # other nodes, ranks that had not written their pid yet).
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=CLEANUP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()
    _kill_strays(watch.run_dir)
    watch.wait_gone(CLEANUP_GRACE_S)
    for path in shm:
        try:
            if os.stat(path).st_ctime >= started_wall_s - 1.0:
                os.unlink(path)
        except OSError:
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_strays(run_dir: str) -> None:
    """Kill any worker of this run still running (torchrun starts each in a session of its own)."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return
    marker = os.fsencode(run_dir)
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in args and b"executors.real.worker" in args:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _remove(run_dir: str) -> None:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)


# -- who failed, and the message ----------------------------------------------------


def blame(views: list[RankView]) -> tuple[str, list[RankView]]:
    """(how, ranks): the rank(s) that failed first, and how: 'died' (killed from
    outside or crashed), 'failed' (an error of its own, or an injected exit),
    'exited' (an exit code without an error file: inside a library, say), 'hung',
    'timeout', 'ended' (by a signal); ('', []) when no rank failed.

    The order of these kinds is the causal order argued in the module
    docstring; within a kind, the earliest first.
    """
    ended = [v for v in views if v.gone_at is not None]
    said_why = [v for v in ended if v.error is not None or v.status.split()[:1] in (["died"], ["timeout"])]
    silent = [v for v in ended if v not in said_why and not v.ended_by_launcher]
    killed = [v for v in silent if v.exit_code is None]
    if killed:
        return "died", _first(killed)
    failed = [v for v in said_why if v.error is not None or v.status.startswith("died ")]
    if failed:
        # The looks order them; within one look, their own clocks (an injected
        # exit, which writes no time, goes first: it is not a consequence).
        return "failed", sorted(failed, key=lambda v: (v.gone_at, v.error_time_ns or 0))[:1]
    if silent:
        return "exited", _first(silent)
    hung = [v for v in views if v.stopped]
    if hung:
        # A stopped process first, then the longest still.
        return "hung", sorted(hung, key=lambda v: (v.proc_state not in ("T", "t"), -(v.beat_age_s or 0.0)))
    timeouts = [v for v in views if v.status.startswith("timeout ")]
    if timeouts:
        return "timeout", sorted(timeouts, key=lambda v: (v.gone_at is None, v.gone_at or 0.0))
    if ended:
        return "ended", sorted(ended, key=lambda v: v.gone_at)[:1]
    return "", []


def _first(ended: list[RankView]) -> list[RankView]:
    """Those of ``ended`` that ended first: found at the earliest look, and of those
    the ones already reaped, if not all were; several where nothing tells them apart."""
    first = min(v.gone_at for v in ended)
    group = [v for v in ended if v.gone_at == first]
    reaped = [v for v in group if v.reaped]
    return reaped if reaped else group


def _where(status: str) -> str:
    """Where a status puts a rank: 'in op 7 (allreduce)'."""
    words = status.split()
    if len(words) >= 3 and words[0] in ("op", "died", "timeout") and words[1].lstrip("-").isdigit():
        index, kind = int(words[1]), words[2]
        if index == -1:
            return "in the barrier that starts a repeat"
        if index < -1:
            return "before it ran any operation"
        return f"in op {index} ({kind})"
    if words[:1] == ["done"]:
        return "after its program (in the final gather)"
    return "before it ran any operation"


def _was(status: str) -> str:
    where = _where(status)
    if where.startswith("in op "):
        op = where[len("in op "):].replace("(", "").replace(")", "")
        return f"was in op {op}"
    if where.startswith("in "):
        return f"was {where}"
    if where.startswith("after "):
        return "had finished its program"
    return where


def _how_it_ended(v: RankView) -> str:
    if v.exit_signal is not None:
        return f"killed by {_signal_name(v.exit_signal)}"
    if v.exit_code is not None:
        return f"exited with code {v.exit_code}"
    return "its process vanished (killed from outside, or crashed)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _short(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _heartbeat_words(v: RankView) -> str:
    age = f"no heartbeat for {v.beat_age_s:.1f} s" if v.beat_age_s is not None else "no heartbeat"
    return age + (" (its process is stopped: SIGSTOP?)" if v.proc_state in ("T", "t") else " (stopped?)")


def _head(how: str, v: RankView, timeout_s: float) -> str:
    where = _where(v.status)
    if how == "died":
        return f"rank {v.rank} died {where}: {_how_it_ended(v)}"
    if how == "failed":
        if v.error is not None:
            return f"rank {v.rank} failed {where}: {v.error}"
        return f"rank {v.rank} died {where}: {_how_it_ended(v)} (injected fault)"
    if how == "exited":
        return f"rank {v.rank} died {where}: {_how_it_ended(v)} without saying why (see its stderr)"
    if how == "hung":
        return f"rank {v.rank} hung {where}: {_heartbeat_words(v)}"
    if how == "timeout":
        return f"rank {v.rank} timed out {where}: no progress for {timeout_s:g} s"
    signals = [_signal_name(s) for s in v.signals if s in _ENDING_SIGNALS]
    return f"rank {v.rank} was ended {where} by {signals[0] if signals else _how_it_ended(v)} (from outside?)"


def _line(v: RankView, how: str, cause: RankView, timeout_s: float) -> str:
    """How a rank other than the first to fail ended."""
    if v.status == "done" and v.gone_at is None and v.proc_state is None:
        return f"rank {v.rank}: finished its program"
    if how == "hung":
        waiting = f"rank {v.rank}: waiting {_where(v.status)} for the hung rank"
        if v.error is not None:
            return f"{waiting}; then failed: {_short(v.error)}"
        if v.status.startswith("timeout "):
            return f"{waiting}; its watchdog ended it after {timeout_s:g} s"
        return f"{waiting}; stopped by the launcher"
    after = f"after rank {cause.rank} failed"
    if v.gone_at is None:
        extra = f"; it had stopped responding: {_heartbeat_words(v)}" if v.stopped else ""
        return f"rank {v.rank}: stopped by the launcher {after} ({_was(v.status)}{extra})"
    if v.error is not None:
        return f"rank {v.rank}: stopped {after} ({_was(v.status)}); the failure reached it as: {_short(v.error)}"
    if v.status.startswith("timeout "):
        return f"rank {v.rank}: stopped {after} ({_was(v.status)}; its watchdog ended it after {timeout_s:g} s)"
    if v.ended_by_launcher:
        return f"rank {v.rank}: stopped by the launcher {after} ({_was(v.status)})"
    # Ended silently too, but later (a later look, or the kernel's account):
    # mpiexec kills every rank when one aborts.
    return f"rank {v.rank}: stopped {after} ({_was(v.status)}): {_how_it_ended(v)}"


def failure_message(backend: str, views: list[RankView], timeout_s: float, *, code: int | None = None,
                    reason: str | None = None, stderr_tail: list[str] | None = None) -> str:
    """One block: the rank that failed first and how, then each other rank and why it stopped."""
    how, causes = blame(views) if reason is None else ("", [])
    head = f"{backend} run failed"
    lines = []
    if causes:
        cause = causes[0]
        head += ": " + _head(how, cause, timeout_s)
        for v in views:
            if v is cause:
                continue
            if v in causes:
                lines.append(f"rank {v.rank}: also " + _head(how, v, timeout_s).split(" ", 2)[2])
            else:
                lines.append(_line(v, how, cause, timeout_s))
    else:
        if reason:
            head += f": {reason}; killed it"
        elif code:
            head += f" (exit code {code})"
        for v in views:
            state = _was(v.status) if v.status != "done" else "had finished its program"
            if v.stopped:
                state += f"; {_heartbeat_words(v)}"
            if v.error is not None:
                state += f"; failed: {_short(v.error)}"
            lines.append(f"rank {v.rank}: {state}")
    if stderr_tail:
        lines.append("last lines of the ranks' stderr:")
        lines += ["  " + line for line in stderr_tail]
    return "\n".join([head] + ["  " + line for line in lines])
