"""Launch a real run from a plain process, and make sure it ends.

``launch(executor_class, scenario, options)`` writes the scenario to a
temporary folder, starts the backend's launcher (``mpiexec -n N``,
``torchrun --nproc-per-node N``: the class's ``launch_command``) on
``python -m executors.real.worker`` in a session of its own, and waits.

A run never hangs forever: each rank's watchdog ends the job when one
operation outlasts ``options.timeout_s``, and the launcher kills the whole
process group when the ranks show no sign of life (no rank entered a new
operation) for ``options.timeout_s`` plus a start-up grace.  Either way the
error names the ranks and the operations they were in, from the status file
each rank keeps, and no process is left behind.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from executors.real.options import RealOptions, RealRunError
from executors.real.status import read_status

START_GRACE_S = 60.0


def scenario_for_workers(scenario) -> dict:
    """The scenario as self-contained plain data (a topology file becomes explicit nodes and links)."""
    data = scenario.to_dict()
    # A real run ignores the simulated machine; a profile's path may not resolve from the workers.
    data.pop("profile", None)
    if not isinstance(data.get("topology"), dict):
        data["topology"] = scenario.topology.to_dict()
    data.setdefault("name", scenario.name)
    return data


def launch(executor_class, scenario, options: RealOptions, *, hostfile: str | None = None,
           timeout_s: float | None = None, keep_dir: bool = False):
    """Run ``scenario`` for real with the backend of ``executor_class`` (a ``RealExecutor``
    subclass, as the registry gives it); return rank 0's RunResult."""
    backend = executor_class.name
    run_dir = tempfile.mkdtemp(prefix=f"distsim-{backend}-")
    try:
        Path(run_dir, "scenario.json").write_text(json.dumps(scenario_for_workers(scenario)))
        Path(run_dir, "options.json").write_text(json.dumps({**options.to_dict(), "backend": backend}))
        if hostfile and not Path(hostfile).is_file():
            raise RealRunError(f"hostfile {hostfile}: no such file")
        cmd = executor_class.launch_command(scenario.nranks, ["executors.real.worker", run_dir], hostfile)
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
        try:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        except OSError as exc:
            raise RealRunError(f"cannot start {cmd[0]}: {exc.strerror or exc}") from None
        finally:
            stdout.close()
            stderr.close()
        silent_limit_s = options.timeout_s + START_GRACE_S
        started = last_life = last_look = time.monotonic()
        poll_s = 0.02 if scenario.nranks <= 64 else 0.1
        seen: dict = {}
        vanished: dict[int, str] = {}  # rank -> its status when its process was found gone
        reason = None
        try:
            while proc.poll() is None:
                # Often enough to tell a rank that died from the ones its
                # launcher then ends (within milliseconds), on a few ranks.
                time.sleep(poll_s)
                now = time.monotonic()
                if now - last_look >= 0.5:
                    last_look = now
                    if _signs_of_life(run_dir, seen):
                        last_life = now
                _watch_rank_processes(run_dir, scenario.nranks, vanished)
                if timeout_s is not None and now - started > timeout_s:
                    reason = f"the run took longer than {timeout_s:g} s"
                elif now - last_life > silent_limit_s:
                    reason = f"no rank started a new operation for {silent_limit_s:g} s"
                if reason:
                    _kill_group(proc)
                    break
        except BaseException:
            # Ctrl-C (or any error here): the job is in a session of its own,
            # so the terminal's signal never reached it; end it before leaving.
            _kill_group(proc)
            raise
        code = proc.wait()
        if code != 0 or reason is not None:
            _kill_ranks(run_dir, scenario.nranks)
        result_path = Path(run_dir, "result.pkl")
        if reason is None and code == 0 and result_path.exists():
            with open(result_path, "rb") as fh:
                return pickle.load(fh)
        if reason is None:
            # (After the launcher killed the job itself every rank is gone; none "died".)
            _watch_rank_processes(run_dir, scenario.nranks, vanished)
        raise RealRunError(_failure_message(backend, scenario.nranks, run_dir, code, reason, vanished))
    finally:
        if not keep_dir:
            _remove(run_dir)


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


def _watch_rank_processes(run_dir: str, nranks: int, vanished: dict[int, str]) -> None:
    """Note ranks whose process is gone before the job ended (killed from outside, say).

    Ranks that the launcher (mpiexec, torchrun) ended because of another's
    failure leave a ``.terminated`` mark and are not noted.
    """
    if vanished:
        return  # the first to go; the launcher then takes the others down
    for rank in range(nranks):
        pid_file = Path(run_dir, f"rank{rank}.pid")
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            continue
        state = read_status(Path(run_dir, f"rank{rank}.status"))
        if state == "done" or _alive(pid) or Path(run_dir, f"rank{rank}.terminated").exists():
            continue
        vanished[rank] = state


def _alive(pid: int) -> bool:
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                # A killed child waiting to be reaped by its launcher is a zombie ('Z').
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_ranks(run_dir: str, nranks: int) -> None:
    """Kill the ranks themselves: torchrun starts each in a session of its own,
    out of reach of the launcher's process group."""
    for rank in range(nranks):
        try:
            pid = int(Path(run_dir, f"rank{rank}.pid").read_text())
        except (FileNotFoundError, ValueError):
            continue
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            # The launcher may be gone while ranks linger: make sure of the group.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def rank_states(run_dir: str, nranks: int) -> list[str]:
    states = []
    for rank in range(nranks):
        status = read_status(Path(run_dir, f"rank{rank}.status"))
        error = Path(run_dir, f"rank{rank}.error")
        if error.exists():
            words = status.split()
            where = f"{words[1]} {words[2]}" if len(words) >= 3 and words[0] == "op" else "-2 run"
            states.append(f"error {where} {error.read_text().strip()}")
            continue
        states.append(status or "not started")
    return states


def _describe(rank: int, state: str) -> str:
    words = state.split()
    if words and words[0] in ("op", "died", "timeout", "error") and len(words) >= 3 and words[1].lstrip("-").isdigit():
        index, kind = int(words[1]), words[2]
        if index == -1:
            where = "in the barrier that starts a repeat"
        elif index < -1:
            where = "before it ran any operation"
        else:
            where = f"in op {index} ({kind})"
        verb = {"op": "was", "died": "died", "timeout": "timed out", "error": "failed"}[words[0]]
        detail = " ".join(words[3:])
        return f"rank {rank} {verb} {where}" + (f": {detail}" if detail else "")
    return f"rank {rank}: {state}"


def _failure_message(backend: str, nranks: int, run_dir: str, code: int, reason: str | None,
                     vanished: dict[int, str] | None = None) -> str:
    states = rank_states(run_dir, nranks)
    for rank, state in (vanished or {}).items():
        words = state.split()
        # A rank that said why it failed (an error, a timeout) keeps its own account.
        if words[:1] == ["op"] and len(words) >= 3 and states[rank].split()[:1] == ["op"]:
            # Its process went away while it was in this operation: it died there.
            states[rank] = f"died {words[1]} {words[2]} its process was killed"
    culprits = [r for r, s in enumerate(states) if s.split()[:1] and s.split()[0] in ("died", "timeout", "error")]
    unfinished = [r for r, s in enumerate(states) if s != "done"]
    head = f"{backend} run failed"
    if reason:
        head += f": {reason}; killed it"
    elif code:
        head += f" (exit code {code})"
    lines = [head]
    for rank in culprits or unfinished:
        lines.append("  " + _describe(rank, states[rank]))
    stderr = Path(run_dir, "stderr.txt")
    tail = stderr.read_text(errors="replace").strip().splitlines()[-12:] if stderr.exists() else []
    if tail:
        lines.append("  last lines of the ranks' stderr:")
        lines += ["    " + line for line in tail]
    return "\n".join(lines)


def _remove(run_dir: str) -> None:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
