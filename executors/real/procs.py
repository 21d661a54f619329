"""A launched job's processes, seen and ended from outside: /proc and pidfds.

The launcher is not the ranks' parent (mpiexec or torchrun is) and cannot
wait for them; what it knows of a rank's process it reads here.  A process
counts as ending from the moment SIGKILL is pending on it or it begins to
exit, before its peers can notice anything (``process_ending``).  The exit
status of a rank that ended (killed by SIGKILL, exit code 3) comes from
/proc while the process is still there, else from its pidfd where the
kernel keeps it (Linux 6.15 and later: ``pidfd_exit_status``).
"""
from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path


def open_pidfd(pid: int) -> int | None:
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


def pidfd_exit_status(pidfd: int) -> int | None:
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
class Ending:
    """How a process is ending (``process_ending``)."""

    exit_status: int | None  # its wait status, where /proc still shows it
    reaped: bool  # already reaped by its parent: it died before any sibling that is not


def open_proc_file(pid: int, name: str) -> int | None:
    """/proc/PID/``name`` opened for reading again and again (``os.pread``), or None."""
    try:
        return os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no /proc (macOS), or the process is already gone
        return None


def process_ending(pid: int, stat_fd: int | None, status_fd: int | None) -> Ending | None:
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
        return None if alive(pid) else Ending(None, False)
    try:
        fields = os.pread(stat_fd, 4096, 0).rsplit(b")", 1)[1].split()
    except (OSError, IndexError):  # ESRCH once its parent reaped it
        return Ending(None, True)
    state, flags = fields[0].decode(), int(fields[6])
    if state in ("Z", "X", "x") or flags & _PF_EXITING:
        # exit_code (field 52, Linux 3.5 and later), set just after PF_EXITING: 0 may be "not yet".
        exit_status = int(fields[49]) if len(fields) > 49 else None
        if exit_status == 0 and state not in ("Z", "X", "x"):
            exit_status = None
        return Ending(exit_status, False)
    if status_fd is not None and _sigkill_pending(status_fd):
        return Ending(signal.SIGKILL, False)
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


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not)."""
    if os.path.isdir("/proc/self"):
        state = proc_state(pid)
        # A killed child waiting to be reaped by its launcher is a zombie ('Z').
        return state is not None and state != "Z"
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def proc_state(pid: int | None) -> str | None:
    """The process's state letter from /proc ('R', 'S', 'T' stopped, 'Z' zombie...), None where unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def shm_files(pid: int) -> set[str]:
    """The files in /dev/shm that ``pid`` has mapped and that still exist."""
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


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the process group ``proc`` leads (it started in a session of its own)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_strays(run_dir: str) -> None:
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
