"""Sweeps: run many points, on Dask distributed, each point cached by its content hash.

A point is ``fn(*args)`` with plain arguments (a scenario dict, a backend
name, numbers).  Its key is the SHA-256 of the canonical JSON of the
function's name, its arguments and the project's version, so the same point
of the same sweep finds its result again in ``<out>/points/<key>.json``: a
rerun reuses what is there and computes only what is missing.  A result is
written the moment it arrives, so an interrupted sweep keeps every finished
point.  A point that raises is recorded with its error, never cached, and the
sweep goes on; the caller gets ``SweepError`` listing the failures at the end.

``jobs <= 1`` (and no scheduler) runs in this process, without Dask: tests
and small sweeps stay fast.  Otherwise the points run on an embedded
``LocalCluster`` (``jobs`` worker processes, one thread each) or, with a
scheduler address, on an existing cluster.  Results come back in task order
and never depend on ``jobs`` or on where they ran.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from experiments.output import make_out_dir, write_json_atomic

POINTS_DIR = "points"
# How long to try to connect to a scheduler given by address.
SCHEDULER_TIMEOUT_S = 10


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


def point_key(fn: Callable, args: Sequence[Any], version: str | None = None) -> str:
    """The content hash of one point: its function, its arguments and the project's version."""
    data = {"fn": f"{fn.__module__}.{fn.__qualname__}", "args": _canonical(list(args)),
            "version": version or project_version()}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SweepStats:
    total: int = 0
    reused: int = 0
    computed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


class SchedulerError(RuntimeError):
    """The Dask scheduler given by address could not be reached; nothing ran."""


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
               order: Sequence[int] | None = None, stream=None, reuse: bool = True) -> tuple[list[Any], SweepStats]:
    """Run every task not already in ``cache_dir``; results in task order and the sweep's counts.

    ``reuse=False`` computes every point again and overwrites its cached result.

    ``on_done(i, result)`` runs as each point finishes (cached ones first),
    ``on_failed(i, error)`` as one fails.  ``order`` is the submission order.
    ``cache_if(result)`` says whether a result may be cached (default: all).
    """
    stream = sys.stderr if stream is None else stream
    total = len(tasks)
    stats = SweepStats(total=total)
    results: list[Any] = [None] * total
    order = list(order) if order is not None else list(range(total))
    folder = make_out_dir(cache_dir) if cache_dir is not None else None
    version = project_version()
    keys = [point_key(fn, args, version) for fn, args in tasks] if folder is not None else [None] * total

    todo = []
    for i in order:
        if folder is not None and reuse:
            path = folder / f"{keys[i]}.json"
            if path.exists():
                try:
                    stored = json.loads(path.read_text())
                    if stored.get("key") == keys[i] and "result" in stored:
                        results[i] = _decode(stored["result"])
                        stats.reused += 1
                        continue
                except (OSError, ValueError, AttributeError):
                    pass  # a damaged file: compute the point again
        todo.append(i)
    if folder is not None:
        how = "" if reuse else ", --fresh: every point computed again"
        print(f"reused {stats.reused} of {total} points (cache {folder}{how})", file=stream, flush=True)
    pending = set(todo)
    for i in order:
        if i not in pending and on_done is not None:
            on_done(i, results[i])

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
    if scheduler is None and (jobs <= 1 or len(todo) <= 1):
        for i in todo:
            fn, args = tasks[i]
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - one failing point is recorded, the sweep goes on
                failed(i, _error_text(exc))
                continue
            finished(i, result)
        return results, stats
    _run_on_dask(tasks, todo, jobs, scheduler, finished, failed)
    return results, stats


def _run_on_dask(tasks, todo: list[int], jobs: int, scheduler: str | None, finished, failed) -> None:
    # Dask is imported here only: serial sweeps and the rest of the project never pay for it.
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        # Dashboard off; the scheduler's small HTTP server (health, metrics) on a free
        # local port, not 8787, so that two sweeps side by side do not collide.
        cluster = LocalCluster(n_workers=min(jobs, len(todo)), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                               scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
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
        for future in futures:
            future.cancel()
        client.close()
        if cluster is not None:
            cluster.close()
