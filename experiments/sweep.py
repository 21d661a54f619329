"""Sweeps: run many points, on Dask distributed, each point cached by its content hash.

A point is ``fn(*args)`` with plain arguments (a scenario dict, a backend
name, numbers).  Its key is the SHA-256 of the canonical JSON of the
function's name, its arguments, the contents of every file they name (a
topology, profile, model or node-type file, and the files those name), the
project's version and a hash of its code, so the same point of the same sweep
finds its result again in ``<out>/points/<key>.json``: a rerun reuses what is
there and computes only what is missing, and editing a named file or the code
makes the points it may change miss.  A result is
written the moment it arrives, so an interrupted sweep keeps every finished
point.  A point that raises is recorded with its error, never cached, and the
sweep goes on; the caller gets ``SweepError`` listing the failures at the end.

``jobs <= 1`` (and no scheduler) runs in this process, without Dask: tests
and small sweeps stay fast.  Otherwise the points run on an embedded
``LocalCluster`` (``jobs`` worker processes, one thread each), with a
scheduler address on an existing cluster, or with ``SlurmOptions`` on workers
that dask-jobqueue's ``SLURMCluster`` submits as Slurm jobs.  Results come back in task order
and never depend on ``jobs`` or on where they ran.
"""
from __future__ import annotations

import hashlib
import json
import logging
import importlib
import math
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from experiments.output import make_out_dir, write_json_atomic
from topologies.io import parse_yaml

POINTS_DIR = "points"
# How long to try to connect to a scheduler given by address.
SCHEDULER_TIMEOUT_S = 10
# How long closing a cluster may take (after Ctrl-C too) before we stop waiting.
CLOSE_TIMEOUT_S = 10

# The code a point's result depends on: these packages' modules, and their data
# files (presets) except experiments/'s, which are example scenarios (a scenario
# file a point names is followed by its contents, below).
SOURCE_PACKAGES = ("topologies", "workloads", "simcore", "executors", "experiments")
DATA_SUFFIXES = (".yaml", ".yml", ".json")
# A file a point names enters its key by a hash of its bytes, up to this size;
# a bigger one (or a folder) enters by its name only.
MAX_HASHED_FILE_BYTES = 64 * 2**20
# A named YAML/JSON file up to this size is read for the files it names in turn
# (a topology file naming a node-type file), this many levels deep.
MAX_FOLLOWED_FILE_BYTES = 2**20
MAX_FOLLOW_DEPTH = 3
# Text longer than this, or with a line break, is never taken for a file name.
MAX_PATH_CHARS = 4096

SLURM_MISSING = "--slurm needs dask-jobqueue: pip install -e '.[slurm]'"
# Memory per Slurm job when --slurm-memory is not given: this much per core.
SLURM_MEMORY_PER_CORE_GB = 2


def project_version() -> str:
    """The installed distsim version, else the one in pyproject.toml next to the packages."""
    try:
        return metadata.version("distsim")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        for line in pyproject.read_text().splitlines() if pyproject.exists() else ():
            if line.strip().startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
        return "unknown"


def _canonical(value: Any) -> Any:
    """``value`` as canonical JSON-able data; non-finite floats tagged so they survive a round trip."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"a sweep point holds {type(value).__name__}, which has no canonical JSON form")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


_SOURCE_HASH: str | None = None


def tree_hash(root: Path) -> str:
    """SHA-256 over the code under ``root``: ``SOURCE_PACKAGES``' .py files and presets, with their paths."""
    h = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or (path.suffix in DATA_SUFFIXES and package != "experiments"):
                h.update(path.relative_to(root).as_posix().encode() + b"\0")
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def source_hash() -> str:
    """``tree_hash`` of this project's code, computed once per process."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        _SOURCE_HASH = tree_hash(Path(__file__).resolve().parents[1])
    return _SOURCE_HASH


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _file_digest(path: Path, memo: dict[str, str]) -> str | None:
    """SHA-256 of the file at ``path`` ("large:<size>" past the limit), or None if it is not a file.

    ``memo`` (by resolved path) spares reading a file again for the next point of
    the same sweep; it lives as long as one sweep's key computation.
    """
    try:
        if not path.is_file():
            return None
        resolved = str(path.resolve())
        if resolved not in memo:
            size = path.stat().st_size
            memo[resolved] = (f"large:{size}" if size > MAX_HASHED_FILE_BYTES
                              else hashlib.sha256(path.read_bytes()).hexdigest())
        return memo[resolved]
    except (OSError, ValueError):
        return None


def _named_files(value: Any, bases: Sequence[Path], found: dict[str, list[str]], seen: set[str],
                 depth: int, memo: dict[str, str]) -> None:
    """Add to ``found`` the digest of every file a string in ``value`` names.

    A relative name is looked up in each of ``bases`` (the working directory,
    a scenario's folder), as the loaders resolve it; a YAML or JSON file found
    is read for the files it names in turn, relative to the working directory
    and to its own folder.
    """
    strings = [s for s in _strings(value) if s and len(s) <= MAX_PATH_CHARS and "\n" not in s and "\0" not in s]
    folders = list(bases)
    for s in strings:  # a folder among the arguments (a scenario's base_dir) is a base too
        try:
            if Path(s).is_dir() and Path(s) not in folders:
                folders.append(Path(s))
        except (OSError, ValueError):
            pass
    for s in strings:
        candidates = [Path(s)] if Path(s).is_absolute() else [base / s for base in folders]
        for path in candidates:
            digest = _file_digest(path, memo)
            if digest is None:
                continue
            found.setdefault(s, []).append(digest)
            if (depth < MAX_FOLLOW_DEPTH and path.suffix.lower() in DATA_SUFFIXES
                    and not digest.startswith("large:") and digest not in seen):
                seen.add(digest)
                try:
                    if path.stat().st_size <= MAX_FOLLOWED_FILE_BYTES:
                        inner = parse_yaml(path.read_text(), where=str(path), error=ValueError)
                        _named_files(inner, [Path("."), path.parent], found, seen, depth + 1, memo)
                except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                    pass  # not data we can read: its bytes are in the key already


def point_key(fn: Callable, args: Sequence[Any], version: str | None = None,
              memo: dict[str, str] | None = None) -> str:
    """The content hash of one point.

    It covers the function, its arguments, the bytes of every file the
    arguments name (see ``_named_files``), the project's version and its code
    (``source_hash``): a point is computed again when any of them changes.
    ``memo``: file digests already read for other points of the same sweep.
    """
    canonical = _canonical(list(args))
    files: dict[str, list[str]] = {}
    _named_files(canonical, [Path(".")], files, set(), 0, {} if memo is None else memo)
    data = {"fn": f"{fn.__module__}.{fn.__qualname__}", "args": canonical,
            "version": version or project_version(), "code": source_hash()}
    if files:
        data["files"] = files
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SlurmOptions:
    """Workers as Slurm jobs (dask-jobqueue's ``SLURMCluster``): ``jobs`` jobs of
    ``cores`` cores, each running one single-threaded worker per core."""
    jobs: int = 1
    cores: int = 1
    walltime: str = "01:00:00"
    partition: str | None = None
    memory: str | None = None  # per job; default SLURM_MEMORY_PER_CORE_GB per core


def slurm_problem() -> str | None:
    """Why ``--slurm`` cannot run here (no dask-jobqueue, no ``sbatch``), or None; checked before any work."""
    try:
        importlib.import_module("dask_jobqueue")  # optional: pip install -e '.[slurm]'
    except ImportError:
        return SLURM_MISSING
    if shutil.which("sbatch") is None:
        return ("--slurm: sbatch is not on PATH; run the sweep on a machine that submits Slurm jobs "
                "(a login node), or use --scheduler or --jobs")
    return None


def slurm_cluster(options: SlurmOptions):
    """The ``SLURMCluster`` a ``--slurm`` sweep runs on; it submits nothing until scaled.

    Settings not given here (account, network interface, extra #SBATCH lines)
    come from Dask's jobqueue configuration (``~/.config/dask/jobqueue.yaml``).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RuntimeError(SLURM_MISSING) from None
    kwargs: dict[str, Any] = {
        "cores": options.cores,
        "processes": options.cores,  # one single-threaded worker per core, as the local cluster runs
        "memory": options.memory or f"{SLURM_MEMORY_PER_CORE_GB * options.cores}GB",
        "walltime": options.walltime,
        "silence_logs": logging.ERROR,
        "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},
    }
    if options.partition:
        kwargs["queue"] = options.partition
    return SLURMCluster(**kwargs)


@dataclass
class SweepStats:
    total: int = 0
    reused: int = 0
    computed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


class SchedulerError(RuntimeError):
    """The Dask scheduler given by address could not be reached, or the Slurm cluster not started; nothing ran."""


class SweepError(Exception):
    """Some points raised; every other point finished (and is cached)."""

    def __init__(self, failures: list[tuple[int, str]], results: list[Any] | None = None):
        self.failures = failures
        self.results = results  # task order; None where a point failed
        super().__init__(f"{len(failures)} point(s) failed: " + "; ".join(
            f"point {i + 1}: {why}" for i, why in failures))


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def run_points(tasks: Sequence[tuple[Callable, tuple]], *, jobs: int, cache_dir: str | Path | None = None,
               scheduler: str | None = None, cache_if: Callable[[Any], bool] | None = None,
               on_done: Callable[[int, Any], None] | None = None,
               on_failed: Callable[[int, str], None] | None = None,
               on_reused: Callable[[int, Any], None] | None = None,
               order: Sequence[int] | None = None, stream=None, reuse: bool = True,
               slurm: SlurmOptions | None = None) -> tuple[list[Any], SweepStats]:
    """Run every task not already in ``cache_dir``; results in task order and the sweep's counts.

    ``reuse=False`` computes every point again and overwrites its cached result.
    ``scheduler`` (an address) or ``slurm`` run the points on that cluster, whatever ``jobs``.

    ``on_done(i, result)`` runs as each point finishes, ``on_reused(i, result)``
    for each cached point, first (default: ``on_done``), ``on_failed(i, error)``
    as one fails.  ``order`` is the submission order.
    ``cache_if(result)`` says whether a result may be cached (default: all).
    """
    stream = sys.stderr if stream is None else stream
    total = len(tasks)
    stats = SweepStats(total=total)
    results: list[Any] = [None] * total
    order = list(order) if order is not None else list(range(total))
    folder = make_out_dir(cache_dir) if cache_dir is not None else None
    version = project_version()
    memo: dict[str, str] = {}
    keys = [point_key(fn, args, version, memo) for fn, args in tasks] if folder is not None else [None] * total

    todo = []
    for i in order:
        found, result = _read_cached(folder, keys[i]) if folder is not None and reuse else (False, None)
        if found:
            results[i] = result
            stats.reused += 1
        else:
            todo.append(i)
    if folder is not None:
        how = "" if reuse else ", --fresh: every point computed again"
        print(f"reused {stats.reused} of {total} points (cache {folder}{how})", file=stream, flush=True)
    pending = set(todo)
    on_reused = on_reused or on_done
    for i in order:
        if i not in pending and on_reused is not None:
            on_reused(i, results[i])

    def finished(i: int, result: Any) -> None:
        stats.computed += 1
        if folder is not None and (cache_if is None or cache_if(result)):
            stored = _canonical(result)
            write_json_atomic({"key": keys[i], "result": stored}, folder / f"{keys[i]}.json")
            # What a rerun will read back, so a fresh and a reused point give the same table.
            result = _decode(stored)
        results[i] = result
        if on_done is not None:
            on_done(i, result)

    def failed(i: int, why: str) -> None:
        stats.failed.append((i, why))
        if on_failed is not None:
            on_failed(i, why)

    if not todo:
        return results, stats
    if scheduler is None and slurm is None and (jobs <= 1 or len(todo) <= 1):
        _run_here(tasks, todo, finished, failed)
    else:
        _run_on_dask(tasks, todo, jobs, scheduler, slurm, finished, failed, stream)
    return results, stats


def _read_cached(folder: Path, key: str) -> tuple[bool, Any]:
    """(True, the result cached under ``key``), or (False, None) where there is none (a result may be None)."""
    path = folder / f"{key}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key and "result" in stored:
                return True, _decode(stored["result"])
        except (OSError, ValueError, AttributeError):
            pass  # a damaged file: compute the point again
    return False, None


def _run_here(tasks, todo: list[int], finished, failed) -> None:
    """The points in this process, one after another: no Dask to start for a small or serial sweep."""
    for i in todo:
        fn, args = tasks[i]
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failing point is recorded, the sweep goes on
            failed(i, _error_text(exc))
            continue
        finished(i, result)


def _local_cluster(workers: int):
    from distributed import LocalCluster

    # The workers ignore SIGINT: a Ctrl-C at the terminal reaches the whole process
    # group, and this process alone stops the sweep (closing the cluster stops
    # them); otherwise each worker prints a KeyboardInterrupt traceback.  A process
    # started while SIGINT is ignored keeps ignoring it (Python installs no handler
    # over SIG_IGN), so SIGINT is ignored here while the workers start (about a
    # second), which also keeps a half-started cluster from being left behind.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        # Dashboard off; the scheduler's small HTTP server (health, metrics) on a free
        # local port, not 8787, so that two sweeps side by side do not collide.  Logs
        # below CRITICAL are silenced: a point's failure comes back with its future, and
        # a worker whose heartbeat finds the scheduler gone as a Ctrl-C closes the
        # cluster would otherwise print a traceback at ERROR.
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL,
                            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _run_on_dask(tasks, todo: list[int], jobs: int, scheduler: str | None, slurm: SlurmOptions | None,
                 finished, failed, stream) -> None:
    # Dask is imported here only: serial sweeps and the rest of the project never pay for it.
    from distributed import Client, as_completed

    cluster = None
    if slurm is not None:
        try:
            cluster = slurm_cluster(slurm)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:  # e.g. --slurm-memory 12 apples
            raise SchedulerError(f"--slurm: cannot start the Slurm cluster ({_error_text(exc)})") from None
        client = Client(cluster)
        cluster.scale(jobs=slurm.jobs)
        print(f"slurm: submitted {slurm.jobs} job(s) of {slurm.cores} core(s), walltime {slurm.walltime}"
              f"{f', partition {slurm.partition}' if slurm.partition else ''}; the points start as the jobs do",
              file=stream, flush=True)
    elif scheduler is None:
        cluster = _local_cluster(min(jobs, len(todo)))
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise SchedulerError(f"--scheduler {scheduler}: cannot reach it in {SCHEDULER_TIMEOUT_S} s "
                                 f"({_error_text(exc)})") from None
    futures = {}
    try:
        for rank, i in enumerate(todo):
            fn, args = tasks[i]
            # Earlier in ``todo`` (dearer) runs first; pure=False: equal points are still distinct tasks.
            futures[client.submit(fn, *args, pure=False, priority=len(todo) - rank)] = i
        for future in as_completed(list(futures)):
            i = futures[future]
            if future.status == "error":
                failed(i, _error_text(future.exception()))
            else:
                finished(i, future.result())
            future.release()
    finally:
        # Also on Ctrl-C: cancel what is queued, stop the workers (a local cluster's
        # processes, a Slurm cluster's jobs) and wait for them, but not forever.
        for future in futures:
            future.cancel()
        client.close(timeout=CLOSE_TIMEOUT_S)
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT_S)
