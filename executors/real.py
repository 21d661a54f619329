"""What every real backend shares: run a rank's program and time each operation.

A backend (``executors.mpi``, ``executors.torchdist``) supplies a
``RealBackend``: point-to-point and native collective calls on byte buffers,
a barrier, a clock and a gather.  ``run_real`` then executes the scenario's
program for this rank, exactly the operations the simulator ran:

- compute: matrix products of float32 matrices sized to the operation's FLOPs
  (2 n^3 per n x n product), never a sleep;
- send / recv: real buffers of the given size;
- collectives, ``native``: the library's own call (``Allreduce``,
  ``all_reduce``...); ``algorithm``: the lowered point-to-point steps of the
  named algorithm (``workloads.collectives.lower``), Isend/Irecv then Waitall
  per step, on a separate communicator so user tags never collide;
- non-blocking collectives start at once and complete at their ``wait``.

Buffers are bytes (uint8), and reductions add bytes modulo 256 in both modes,
so a result can be checked exactly (``check=True``).

Timing: ``aligned`` puts a barrier before every operation and times each
from that barrier, so an operation's time is its own (the only mode that is
valid is when every rank runs the same number of operations and none is
non-blocking); ``free`` puts one barrier before each repeat and lets the
ranks run on, as the simulator does.  ``auto`` picks aligned where it is valid.
Records carry ``start_s``/``end_s`` from the repeat's first barrier, and a
``repeat`` column; warm-up repeats are run and dropped.
"""
from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from executors.base import Executor
from simcore.result import RECORD_COLUMNS, RunResult
from workloads.collectives import alltoall_output_layout, block_layout, lower
from workloads.ops import Collective, Compute, Recv, Send, Wait

MODES = ("native", "algorithm")
TIMINGS = ("auto", "aligned", "free")
# Side of the square float32 matrices compute operations multiply: large
# enough for BLAS to run near peak, small enough to hit a FLOP count closely.
KERNEL_N = 256


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


class RealRunError(RuntimeError):
    """A real run that could not finish; the message names the rank and operation."""


@dataclass(frozen=True)
class RealOptions:
    mode: str = "native"
    warmup: int = 1
    repeats: int = 3
    timing: str = "auto"
    timeout_s: float = 120.0
    check: bool = False
    # One core per rank when the machine has a core for every local rank:
    # unpinned ranks that the OS puts on one core make shared-memory transfers
    # several times slower, and differently from launch to launch.
    pin: bool = True
    # Test hook, "ACTION:RANK:OP" with ACTION exit, hang or raise: that rank
    # dies, stops, or hits a Python error at that operation, to prove that
    # failures end the run cleanly.
    fault: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {self.timing!r}")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {self.warmup} and {self.repeats}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.fault:
            parse_fault(self.fault)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_fault(text: str) -> tuple[str, int, int]:
    try:
        action, rank, op = text.split(":")
        if action not in ("exit", "hang", "raise"):
            raise ValueError
        return action, int(rank), int(op)
    except ValueError:
        raise ValueError(f"fault must look like exit:RANK:OP, hang:RANK:OP or raise:RANK:OP, got {text!r}") from None


class RealBackend(ABC):
    """One rank of a real run.  Buffers are 1-D uint8 arrays (numpy or torch)."""

    name = ""
    rank: int
    size: int
    local_rank: int = 0  # among the ranks on this host
    local_size: int = 1

    @property
    def transport(self) -> str:
        """What carries the bytes (the MPI library, gloo or NCCL), for the summary."""
        return self.name

    @abstractmethod
    def barrier(self) -> None: ...

    def now_s(self) -> float:
        return time.perf_counter()

    def synchronize(self) -> None:
        """Wait for queued device work before the clock is read (GPU backends)."""

    @abstractmethod
    def buffer(self, nbytes: int): ...

    @abstractmethod
    def fill(self, buf, value: int) -> None: ...

    @abstractmethod
    def to_numpy(self, buf) -> np.ndarray: ...

    @abstractmethod
    def send(self, buf, peer: int, tag: int) -> None: ...

    @abstractmethod
    def recv(self, buf, peer: int, tag: int) -> None: ...

    # isend/irecv carry the steps of lowered collectives, on a communicator
    # (process group) of their own; send/recv carry the users' messages.
    @abstractmethod
    def isend(self, buf, peer: int, tag: int): ...

    @abstractmethod
    def irecv(self, buf, peer: int, tag: int): ...

    @abstractmethod
    def waitall(self, requests) -> None:
        """Wait for requests from ``isend``/``irecv``."""

    def wait(self, request) -> None:
        """Wait for a request returned by a non-blocking ``collective``."""
        request.wait()

    @abstractmethod
    def add_(self, dst, src) -> None: ...

    @abstractmethod
    def copy_(self, dst, src) -> None: ...

    @abstractmethod
    def collective(self, op: Collective, buf, out, blocking: bool):
        """The library's own call; returns a request to wait on when not blocking."""

    def enter_thread(self) -> None:
        """Called first in the communication stream's thread (a GPU backend sets its device there)."""

    def stream(self) -> "RealBackend | None":
        """A view of this rank that runs collectives on communicators of its own
        and may be used from a second thread (the communication stream), or None
        where the library cannot be called from two threads."""
        return None

    def prepare_collective(self, op: Collective, buf, out, blocking: bool):
        """A no-argument callable making ``collective``'s call, its arguments worked
        out now, so that the timed region holds the library call and little else."""
        return lambda: self.collective(op, buf, out, blocking)

    @abstractmethod
    def matmul(self, rows: int) -> None:
        """One product of a (rows x KERNEL_N) by a (KERNEL_N x KERNEL_N) float32 matrix."""

    @abstractmethod
    def gather(self, obj) -> list | None:
        """All ranks' ``obj`` at rank 0 (None elsewhere)."""

    def processor_name(self) -> str:
        import socket

        return socket.gethostname()

    def pin_to_core(self) -> str:
        """Bind this process to one core of those it may use, if there is one per local rank.

        Returns the core, or why it did not pin.
        """
        if not hasattr(os, "sched_getaffinity"):
            return "not pinned (no CPU affinity on this system)"
        cores = sorted(os.sched_getaffinity(0))
        if self.local_size > len(cores):
            return f"not pinned ({self.local_size} ranks on {len(cores)} cores)"
        core = cores[self.local_rank]
        os.sched_setaffinity(0, {core})
        return f"core {core}"

    def close(self) -> None:
        pass


class RealExecutor(Executor):
    """A real backend's executor.

    Inside a job that the backend's launcher started (mpiexec, srun, torchrun)
    it runs this process's rank; rank 0 returns the RunResult, the others
    None.  From a plain process it launches such a job itself
    (``executors.launch``), which ends dead or stuck runs.
    """

    def __init__(self, options: RealOptions | None = None, launcher_timeout_s: float | None = None):
        self.options = options or RealOptions()
        self.launcher_timeout_s = launcher_timeout_s

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() == ""

    @abstractmethod
    def inside_job(self) -> bool: ...

    @abstractmethod
    def backend(self) -> RealBackend: ...

    def launch_options(self) -> dict[str, Any]:
        return {}

    # One backend per process inside a job: a process group cannot be set up
    # again after it is torn down, and a command may run several scenarios.
    _job_backends: dict[str, RealBackend] = {}

    def run(self, scenario):
        if self.inside_job():
            backend = RealExecutor._job_backends.get(self.name)
            if backend is None:
                import atexit

                backend = RealExecutor._job_backends[self.name] = self.backend()
                atexit.register(backend.close)
            return run_real(backend, scenario, self.options)
        from executors.launch import launch

        return launch(self.name, scenario, self.options, timeout_s=self.launcher_timeout_s, **self.launch_options())


# -- the run -------------------------------------------------------------------


def aligned_problem(programs) -> str | None:
    """Why a barrier before every operation would deadlock these programs, or None.

    Aligned timing needs every rank to run the same number of operations, no
    non-blocking ones, and every send at index i matched by its receive at the
    same index on the peer (a barrier between them would wait forever).
    """
    if len({len(p) for p in programs}) != 1:
        return "the ranks run different numbers of operations"
    # Indices at which some rank runs a collective: every rank must run one there.
    for index in range(len(programs[0]) if programs else 0):
        kinds = {isinstance(p[index], Collective) for p in programs}
        if kinds == {True, False}:
            return f"op {index} is a collective on some ranks but not on every rank"
    for rank, program in enumerate(programs):
        for index, op in enumerate(program):
            if isinstance(op, Wait) or (isinstance(op, Collective) and not op.blocking):
                return f"rank {rank} op {index} is non-blocking"
            if isinstance(op, (Send, Recv)):
                other = programs[op.peer][index]
                want = Recv if isinstance(op, Send) else Send
                if not (isinstance(other, want) and other.peer == rank and other.tag == op.tag):
                    return (f"rank {rank} op {index} ({op.kind} with rank {op.peer}) is not matched by "
                            f"rank {op.peer} op {index}")
    return None


def choose_timing(programs, timing: str) -> str:
    """'aligned' where it is valid (``aligned_problem``), else 'free'; an explicit choice stays."""
    if timing != "auto":
        return timing
    return "free" if aligned_problem(programs) else "aligned"


def run_real(backend: RealBackend, scenario, options: RealOptions, status_dir: str | None = None) -> RunResult | None:
    """Run this rank's program; rank 0 returns the gathered RunResult, others None."""
    programs = scenario.programs()
    if backend.size != scenario.nranks:
        raise RealRunError(
            f"the scenario has {scenario.nranks} ranks but {backend.size} processes were started; "
            f"start it with {scenario.nranks} processes (mpiexec -n {scenario.nranks} / torchrun --nproc-per-node)"
        )
    pinned = backend.pin_to_core() if options.pin else "not pinned (pin off)"
    timing = choose_timing(programs, options.timing)
    problem = aligned_problem(programs) if timing == "aligned" else None
    if problem:
        raise RealRunError(f"timing 'aligned' (a barrier before every operation) would deadlock: {problem}; "
                           "use --timing free")
    runner = _RankRunner(backend, scenario, programs[backend.rank], options, timing, status_dir)
    wall0 = time.perf_counter()
    records = runner.run()
    wall_s = time.perf_counter() - wall0
    gathered = backend.gather((records, backend.processor_name(), pinned))
    if backend.rank != 0:
        return None
    rows = [row for rank_rows, _, _ in gathered for row in rank_rows]
    frame = pd.DataFrame.from_records(rows, columns=list(RECORD_COLUMNS) + ["repeat"])
    frame = frame.sort_values(["repeat", "rank", "op_index"], kind="stable").reset_index(drop=True)
    hosts = [host for _, host, _ in gathered]
    makespans = frame.groupby("repeat")["end_s"].max()
    summary = {
        "scenario": scenario.name,
        "backend": backend.name,
        "transport": backend.transport,
        "mode": options.mode,
        "timing": timing,
        "nranks": backend.size,
        "hosts": sorted(set(hosts)),
        "rank_hosts": hosts,
        "rank_cores": [where for _, _, where in gathered],
        "repeats": options.repeats,
        "warmup": options.warmup,
        "makespan_s": float(makespans.median()),
        "makespan_s_min": float(makespans.min()),
        "makespan_s_max": float(makespans.max()),
        "operations": int((frame["repeat"] == 0).sum()),
        "wall_s": round(wall_s, 4),
    }
    return RunResult(records=frame, summary=summary)


class _RankRunner:
    def __init__(self, backend: RealBackend, scenario, program, options: RealOptions, timing: str,
                 status_dir: str | None):
        self.b = backend
        self.rank = backend.rank
        self.size = backend.size
        self.program = program
        self.options = options
        self.timing = timing
        self.groups = scenario.topology.groups()
        self.fault = parse_fault(options.fault) if options.fault else None
        self.status = RankStatus(os.path.join(status_dir, f"rank{self.rank}.status") if status_dir else None)
        nbytes = [op.nbytes for op in program if isinstance(op, (Send, Recv, Collective))]
        biggest = max(nbytes, default=0)
        self.buf = backend.buffer(biggest)
        # Lowered steps receive what they reduce into scratch; native calls need none.
        self.scratch = backend.buffer(biggest if options.mode == "algorithm" else 0)
        self.out = backend.buffer(max(biggest, self._alltoall_out_bytes()))
        self._native: dict[int, Any] = {}  # op index -> prepared native call
        nonblocking = [(i, op) for i, op in enumerate(program) if isinstance(op, Collective) and not op.blocking]
        self.stream_backend = backend.stream() if nonblocking else None
        # Each non-blocking collective has buffers of its own: several are in
        # flight at once, as DDP's buckets are.
        owner = self.stream_backend or backend
        self._own_buffers = {i: self._buffers_for(owner, op) for i, op in nonblocking}
        self.current: tuple[int, str] | None = None
        self.current_since = 0.0
        self._watchdog_stop = threading.Event()

    def _alltoall_out_bytes(self) -> int:
        sizes = [sum(s for _, s in alltoall_output_layout(op.nbytes, self.rank, self.size))
                 for op in self.program if isinstance(op, Collective) and op.op == "alltoall"]
        return max(sizes, default=0)

    # -- watchdog: a rank stuck in one operation ends the whole run -------------

    def _watch(self) -> None:
        while not self._watchdog_stop.wait(0.2):
            current = self.current
            if current is not None and time.monotonic() - self.current_since > self.options.timeout_s:
                index, kind = current
                message = (f"rank {self.rank}: op {index} ({kind}) did not finish within "
                           f"{self.options.timeout_s:g} s; ending the run")
                self._status(f"timeout {index} {kind}")
                print(message, file=sys.stderr, flush=True)
                os._exit(3)

    def _status(self, text: str) -> None:
        self.status.set(text)

    def _enter(self, index: int, kind: str) -> None:
        self.current = (index, kind)
        self.current_since = time.monotonic()
        self._status(f"op {index} {kind}")
        if self.fault and self.fault[1] == self.rank and self.fault[2] == index:
            action = self.fault[0]
            if action == "exit":
                self._status(f"died {index} {kind}")
                print(f"rank {self.rank}: injected fault: exiting in op {index} ({kind})", file=sys.stderr, flush=True)
                os._exit(9)
            if action == "raise":
                raise RuntimeError(f"injected fault in op {index} ({kind})")
            # "hang": block without progress until the watchdog ends the run.
            threading.Event().wait()

    def run(self) -> list[tuple]:
        watchdog = threading.Thread(target=self._watch, name="distsim-watchdog", daemon=True)
        watchdog.start()
        records: list[tuple] = []
        try:
            for repeat in range(-self.options.warmup, self.options.repeats):
                rows = self._run_once()
                if repeat >= 0:
                    records.extend(row + (repeat,) for row in rows)
            self._status("done")
        finally:
            self._watchdog_stop.set()
            self.status.close()
        return records

    def _run_once(self) -> list[tuple]:
        b = self.b
        aligned = self.timing == "aligned"
        self.current, self.current_since = (-1, "barrier"), time.monotonic()
        b.barrier()
        base = b.now_s()
        rows: list[tuple] = []
        stream = _Stream(self, self.stream_backend, base) if self.stream_backend is not None else None
        handles: dict[str, int] = {}  # handle -> op index of its collective
        try:
            for index, op in enumerate(self.program):
                kind = op.kind
                if self.options.check and isinstance(op, Collective):
                    b.fill(self._buffers(index, op)[0], self.rank + 1)
                if aligned:
                    self.current, self.current_since = (index, "barrier"), time.monotonic()
                    b.barrier()
                self._enter(index, kind)
                if type(op) is Collective and not op.blocking:
                    handles[op.handle] = index
                    if stream is not None:
                        stream.submit(index, op, self._own_buffers[index])
                        continue
                native = None
                if type(op) is Collective and self.options.mode == "native":
                    native = self._native.get(index)
                    if native is None:
                        buf, _, out = self._buffers(index, op)
                        native = self._native[index] = b.prepare_collective(op, buf[: op.nbytes], out, True)
                start = b.now_s()
                peer, nbytes, flops, algorithm = -1, 0, 0.0, ""
                if type(op) is Compute:
                    self._compute(op.flops)
                    flops = op.flops
                elif type(op) is Send:
                    b.send(self.buf[: op.nbytes], op.peer, op.tag)
                    peer, nbytes = op.peer, op.nbytes
                elif type(op) is Recv:
                    b.recv(self.buf[: op.nbytes], op.peer, op.tag)
                    peer, nbytes = op.peer, op.nbytes
                elif type(op) is Collective:
                    # Without a communication stream a non-blocking collective
                    # runs here, at issue: its record is still its own time.
                    peer, nbytes, algorithm = _root_peer(op), op.nbytes, op.algorithm
                    if native is not None:
                        native()
                    else:
                        self._algorithm(op, b, *self._buffers(index, op))
                elif type(op) is Wait:
                    if stream is not None:
                        stream.wait([handles[h] for h in op.handles])
                b.synchronize()
                end = b.now_s()
                self.current = None
                if self.options.check and isinstance(op, Collective):
                    self._check(op, *self._buffers(index, op)[::2])
                rows.append((self.rank, index, kind, algorithm, peer, nbytes, flops, start - base, end - base,
                             math.nan))
            if stream is not None:
                # The program ends when its communication stream is drained.
                self._enter(len(self.program), "wait")
                stream.wait(list(handles.values()))
                self.current = None
        except BaseException:
            if stream is not None:
                # Do not wait for a stream that may be stuck: the error must
                # reach the rank's worker, which ends the run.
                stream.abandon()
            raise
        if stream is not None:
            stream.close()
            rows.extend(stream.rows)
        return rows

    def _buffers_for(self, owner: RealBackend, op: Collective) -> tuple:
        """(buffer, scratch, output) for one collective: scratch only where
        lowered steps reduce into it, output only where the op writes one."""
        reduces = self.options.mode == "algorithm" and op.op in ("allreduce", "reduce", "reduce_scatter")
        writes_out = op.op in ("alltoall", "reduce_scatter")
        out_bytes = max(op.nbytes, sum(s for _, s in alltoall_output_layout(op.nbytes, self.rank, self.size)))
        return (owner.buffer(op.nbytes), owner.buffer(op.nbytes if reduces else 0),
                owner.buffer(out_bytes if writes_out else 0))

    def _buffers(self, index: int, op) -> tuple:
        """(buffer, scratch, output) of the operation at ``index``."""
        own = self._own_buffers.get(index)
        return own if own is not None else (self.buf, self.scratch, self.out)

    def _compute(self, flops: float) -> None:
        per_full = 2.0 * KERNEL_N**3
        full = int(flops // per_full)
        matmul = self.b.matmul
        for _ in range(full):
            matmul(KERNEL_N)
        rows = int(round((flops - full * per_full) / (2.0 * KERNEL_N * KERNEL_N)))
        if rows:
            matmul(rows)

    def _algorithm(self, op: Collective, b: RealBackend, buf, scratch, out) -> None:
        alltoall = op.op == "alltoall"
        if alltoall:
            mine = block_layout(op.nbytes, self.size)[self.rank]
            out_block = alltoall_output_layout(op.nbytes, self.rank, self.size)[self.rank]
            b.copy_(out[out_block[0]: out_block[0] + out_block[1]], buf[mine[0]: mine[0] + mine[1]])
        for step in lower(op, self.rank, self.size, self.groups):
            requests = []
            reduces = []
            for t in step.recvs:
                if t.reduce:
                    view = scratch[t.offset: t.offset + t.nbytes]
                    reduces.append((t, view))
                else:
                    view = (out if alltoall else buf)[t.offset: t.offset + t.nbytes]
                requests.append(b.irecv(view, t.peer, 0))
            for t in step.sends:
                requests.append(b.isend(buf[t.offset: t.offset + t.nbytes], t.peer, 0))
            b.waitall(requests)
            for t, view in reduces:
                b.add_(buf[t.offset: t.offset + t.nbytes], view)

    # -- result checks (check=True): every rank started with bytes rank+1 -------

    def _check(self, op: Collective, buf, out) -> None:
        p, r = self.size, self.rank
        total = sum(range(1, p + 1)) % 256
        layout = block_layout(op.nbytes, p)
        data = self.b.to_numpy(buf[: op.nbytes])
        expect: list[tuple[np.ndarray, int, str]] = []
        if op.op == "allreduce" or (op.op == "reduce" and r == op.root):
            expect.append((data, total, "the sum"))
        elif op.op == "broadcast":
            expect.append((data, (op.root + 1) % 256, "the root's data"))
        elif op.op == "allgather":
            for j, (off, size) in enumerate(layout):
                expect.append((data[off: off + size], (j + 1) % 256, f"block {j} from rank {j}"))
        elif op.op == "reduce_scatter":
            off, size = layout[r]
            expect.append((data[off: off + size], total, f"the sum of block {r}"))
        elif op.op == "alltoall":
            received = self.b.to_numpy(out)
            for j, (off, size) in enumerate(alltoall_output_layout(op.nbytes, r, p)):
                expect.append((received[off: off + size], (j + 1) % 256, f"block {j} from rank {j}"))
        for values, want, what in expect:
            if len(values) and not np.all(values == want):
                bad = int(np.flatnonzero(values != want)[0])
                raise RealRunError(
                    f"rank {r}: {op.op} ({self.options.mode} {op.algorithm}) gave a wrong result: "
                    f"{what} should be {want} but byte {bad} is {int(values[bad])}"
                )


def _root_peer(op: Collective) -> int:
    return op.root if op.op in ("broadcast", "reduce") else -1


class _Stream:
    """A rank's communication stream: its non-blocking collectives run here one
    after another, in issue order, on communicators of their own, while the
    rank's main thread goes on, as NCCL runs DDP's gradient buckets (and as
    the simulator models them).  A record spans the collective's own start and
    end on the stream."""

    def __init__(self, runner: "_RankRunner", backend: RealBackend, base: float):
        import queue

        self.runner = runner
        self.b = backend
        self.base = base
        self.rows: list[tuple] = []
        self.error: BaseException | None = None
        self._done: dict[int, threading.Event] = {}
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="distsim-comm-stream", daemon=True)
        self._thread.start()

    def submit(self, index: int, op: Collective, buffers: tuple) -> None:
        self._done[index] = threading.Event()
        self._queue.put((index, op, buffers))

    def wait(self, indices) -> None:
        for index in indices:
            self._done[index].wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def abandon(self) -> None:
        """Leave the (daemon) thread: after an error, what it still runs no longer matters."""
        self._queue.put(None)

    def _loop(self) -> None:
        runner, b = self.runner, self.b
        b.enter_thread()
        while True:
            item = self._queue.get()
            if item is None:
                return
            index, op, (buf, scratch, out) = item
            try:
                if self.error is None:
                    native = b.prepare_collective(op, buf[: op.nbytes], out, True) \
                        if runner.options.mode == "native" else None
                    start = b.now_s()
                    if native is not None:
                        native()
                    else:
                        runner._algorithm(op, b, buf, scratch, out)
                    b.synchronize()
                    end = b.now_s()
                    if runner.options.check:
                        runner._check(op, buf, out)
                    self.rows.append((runner.rank, index, op.kind, op.algorithm, _root_peer(op), op.nbytes, 0.0,
                                      start - self.base, end - self.base, math.nan))
            except BaseException as exc:  # re-raised in the main thread at its wait
                self.error = exc
            finally:
                self._done[index].set()
