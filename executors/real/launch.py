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

Which rank failed first, and why the launcher can tell, is
``executors.real.blame``'s to say; what it reads of the ranks,
``executors.real.watch`` and ``executors.real.procs``.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from executors.real.blame import failure_message
from executors.real.options import RealOptions, RealRunError
from executors.real.procs import kill_strays, signal_group
from executors.real.status import HEARTBEAT_S
from executors.real.watch import JobWatch, signs_of_life

START_GRACE_S = 60.0
# How long the launcher (mpiexec, torchrun) gets to end what it started
# once the ranks are killed, before its whole process group is killed.
CLEANUP_GRACE_S = 1.0


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
        watch = JobWatch(run_dir, scenario.nranks, options.timeout_s)
        try:
            return _watch_job(proc, watch, backend, options, timeout_s, started_wall_s, on_start)
        finally:
            watch.close()
    finally:
        if not keep_dir:
            _remove(run_dir)


def _watch_job(proc: subprocess.Popen, watch: JobWatch, backend: str, options: RealOptions,
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
                if signs_of_life(run_dir, seen):
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


# -- ending a job -----------------------------------------------------------------


def _end_job(proc: subprocess.Popen, watch: JobWatch, started_wall_s: float) -> None:
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
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=CLEANUP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    proc.wait()
    kill_strays(watch.run_dir)
    watch.wait_gone(CLEANUP_GRACE_S)
    for path in shm:
        try:
            if os.stat(path).st_ctime >= started_wall_s - 1.0:
                os.unlink(path)
        except OSError:
            pass


def _remove(run_dir: str) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
