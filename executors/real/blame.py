"""Which rank made a real run fail, and the message that says so.

``blame(views)`` orders what the launcher knew of each rank when the run
failed (a ``RankView`` each, from ``executors.real.watch``) by cause and
effect; ``failure_message`` names the rank that failed first, and how, and
every other rank as stopped because of it.

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
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

# A rank that is stopped (process state 'T') when the run fails is named as
# hung; one that still runs, by the kernel's account, only once its heartbeat
# (every status.HEARTBEAT_S) stood still for half the timeout, and at least
# this long: a loaded machine can delay a beat by far more than its period.
FROZEN_AFTER_S = 1.0


def frozen_after_s(timeout_s: float) -> float:
    return max(FROZEN_AFTER_S, timeout_s / 2.0)


# Signals that mean "ended by its launcher" (torchrun sends SIGTERM; Ctrl-C is SIGINT).
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
