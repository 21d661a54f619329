"""What every real backend shares: run a rank's program and time each operation.

A backend (``executors.mpi``, ``executors.torchdist``) supplies a
``RealBackend``: point-to-point and native collective calls on byte buffers,
a barrier, a clock and a gather.  ``run_real`` then executes the scenario's
program for this rank, exactly the operations the simulator ran:

- compute: matrix products of float32 matrices sized to the operation's FLOPs
  (2 n^3 per n x n product), never a sleep.  A compute with no FLOPs but
  ``nbytes`` (a memory-bound term: an element-wise kernel, the optimizer
  step) moves its bytes instead: it copies ``nbytes / 2`` bytes from one
  buffer into another (read plus written: ``nbytes`` through memory), in
  pieces of at most ``MOVE_CHUNK_BYTES``, so that a large step costs time
  but no more memory than one piece (pieces that fit a cache run faster than
  memory would: a lower bound, cheap and honest about the bytes).  A compute
  with FLOPs runs its FLOPs alone (its ``nbytes``, ``gemm`` and precision are
  the simulator's roofline);
- send / recv: real buffers of the given size;
- collectives, ``native``: the library's own call (``Allreduce``,
  ``all_reduce``...); ``algorithm``: the lowered point-to-point steps of the
  named algorithm (``workloads.collectives.lower``), Isend/Irecv then Waitall
  per step, on a separate communicator so user tags never collide;
- non-blocking collectives start at once and complete at their ``wait``;
- isend / irecv: the library's non-blocking send and receive, each with a
  buffer of its own, completed at the ``wait`` naming their handle; a
  record spans issue to the moment that wait saw it complete;
- process groups: every operation runs on the communicator of its group
  (``RealBackend.group_view``), made before timing starts; peers and roots are
  group ranks, and a checked collective's ranks fill with group rank + 1.

Buffers are bytes (uint8), and reductions add bytes modulo 256 in both modes,
so a result can be checked exactly (``check=True``).

Timing: ``aligned`` puts a barrier before every operation and times each
from that barrier, so an operation's time is its own (the only mode that is
valid is when every rank runs the same number of operations and none is
non-blocking); ``free`` puts one barrier before each repeat and lets the
ranks run on, as the simulator does.  ``auto`` picks aligned where it is valid;
an explicit ``aligned`` where it would deadlock is refused, before any process
starts when the executor launches the job (``analysis.refuse_aligned``).  A
transformer step always runs free: its pipeline stages run different
programs, with isends, irecvs and DP buckets in flight.
Records carry ``start_s``/``end_s`` from the repeat's first barrier, and a
``repeat`` column; warm-up repeats are run and dropped.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from executors.real.analysis import choose_timing, refuse_aligned
from executors.real.backend import KERNEL_N, RealBackend
from executors.real.options import RealOptions, RealRunError, parse_fault
from executors.real.status import RankStatus
from executors.real.stream import Stream
from simcore.result import Record, RunResult, group_comm_table, records_frame
from workloads.collectives import (SEMANTICS, exchange_layouts, group_server_groups, lower, output_nbytes,
                                   root_peer)
from workloads.ops import Collective, Compute, Irecv, Isend, Recv, Send, Wait, is_nonblocking, record_groups

# The largest piece a memory-bound compute copies at a time (see the module docstring).
MOVE_CHUNK_BYTES = 4 * 2**20


def run_real(backend: RealBackend, scenario, options: RealOptions, status_dir: str | None = None) -> RunResult | None:
    """Run this rank's program; rank 0 returns the gathered RunResult, others None."""
    programs = scenario.programs()
    if backend.size != scenario.nranks:
        raise RealRunError(
            f"the scenario has {scenario.nranks} ranks but {backend.size} processes were started; "
            f"start it with {scenario.nranks} processes (mpiexec -n {scenario.nranks} / torchrun --nproc-per-node)"
        )
    pinned = backend.pin_to_core() if options.pin else "not pinned (pin off)"
    timing = choose_timing(programs, options.timing, scenario.groups)
    refuse_aligned(programs, timing, scenario.groups)
    # Communicators of every group, made by every rank together, before any timing.
    backend.open_groups(scenario.groups)
    runner = RankRunner(backend, scenario, programs[backend.rank], options, timing, status_dir)
    wall0 = time.perf_counter()
    records = runner.run()
    wall_s = time.perf_counter() - wall0
    gathered = backend.gather((records, backend.processor_name(), pinned))
    if backend.rank != 0:
        return None
    pairs = [pair for rank_pairs, _, _ in gathered for pair in rank_pairs]
    frame = records_frame((record for _, record in pairs), repeats=[repeat for repeat, _ in pairs])
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
    per_rank = rank_times(frame, programs, hosts)
    for column in ("compute_s", "comm_s", "wait_s"):
        summary[f"{column}_mean"] = float(per_rank[column].mean())
    return RunResult(records=frame, summary=summary, per_rank=per_rank,
                     per_group=group_comm_table(frame, programs, summary["makespan_s"]))


def rank_times(frame: pd.DataFrame, programs, hosts) -> pd.DataFrame:
    """The simulator's per-rank table from a real run's records: each rank's compute_s (compute
    operations) and comm_s (blocking communication on the main thread), medians over repeats, and
    wait_s, the rest of the median makespan (waits for non-blocking collectives, isends and irecvs,
    idle at the end), so that the three add up to the summary's makespan as they do in the simulator.

    Energy is not measured (NaN).
    """
    # Non-blocking operations overlap the rank's own time line: their waits count, not they.
    background = {(rank, index) for rank, program in enumerate(programs) for index, op in enumerate(program)
                  if is_nonblocking(op)}
    duration = frame["end_s"] - frame["start_s"]
    on_stream = pd.Series([(r, i) in background for r, i in zip(frame["rank"], frame["op_index"])],
                          index=frame.index, dtype=bool)
    compute = duration.where(frame["kind"] == "compute", 0.0)
    comm = duration.where((frame["kind"] != "compute") & (frame["kind"] != "wait") & ~on_stream, 0.0)
    parts = pd.DataFrame({"repeat": frame["repeat"], "rank": frame["rank"], "compute_s": compute, "comm_s": comm,
                          "end_s": frame["end_s"]})
    per = parts.groupby(["repeat", "rank"]).agg(compute_s=("compute_s", "sum"), comm_s=("comm_s", "sum"),
                                                end_s=("end_s", "max")).reset_index()
    makespan_s = float(per.groupby("repeat")["end_s"].max().median()) if len(per) else 0.0
    table = per.groupby("rank")[["compute_s", "comm_s", "end_s"]].median().reindex(
        range(len(programs)), fill_value=0.0)
    table.insert(2, "wait_s", (makespan_s - table["compute_s"] - table["comm_s"]).clip(lower=0.0))
    table.insert(0, "node", [str(h) for h in hosts] if len(hosts) == len(programs) else "")
    table["energy_j"] = math.nan
    return table.reset_index().rename(columns={"index": "rank"})


@dataclass
class _Repeat:
    """One run of a rank's program in progress: what its operations share."""

    base: float  # the repeat's first barrier on the backend's clock: records count from it
    stream: Stream | None
    rows: list[Record] = field(default_factory=list)
    handles: dict[str, int] = field(default_factory=dict)  # handle -> op index of its collective
    # handle -> (op index, op, view, request, buffer, start) of an isend or irecv in flight
    in_flight: dict[str, tuple] = field(default_factory=dict)


class RankRunner:
    def __init__(self, backend: RealBackend, scenario, program, options: RealOptions, timing: str,
                 status_dir: str | None):
        self.b = backend
        self.rank = backend.rank
        self.size = backend.size
        self.program = program
        self.record_groups = record_groups(program)
        self.options = options
        self.timing = timing
        servers = scenario.topology.groups()
        # The topology's servers (world ranks), for the hierarchical all-reduce.
        self.groups = None if servers is None else tuple(tuple(g) for g in servers)
        self.pg = scenario.groups
        self.fault = parse_fault(options.fault) if options.fault else None
        self.status = RankStatus(os.path.join(status_dir, f"rank{self.rank}.status") if status_dir else None)
        nbytes = [op.nbytes for op in program if isinstance(op, (Send, Recv, Collective))]
        biggest = max(nbytes, default=0)
        self.buf = backend.buffer(biggest)
        # Lowered steps receive what they reduce into scratch; native calls need none.
        self.scratch = backend.buffer(biggest if options.mode == "algorithm" else 0)
        self.out = backend.buffer(max(biggest, self._output_bytes()))
        # Source and destination of the copies of memory-bound computes (no FLOPs, some bytes).
        moved = max((op.nbytes // 2 for op in program if type(op) is Compute and not op.flops), default=0)
        piece = min(moved, MOVE_CHUNK_BYTES)
        self._move_src, self._move_dst = backend.buffer(piece), backend.buffer(piece)
        self._native: dict[int, Any] = {}  # op index -> prepared native call
        nonblocking = [(i, op) for i, op in enumerate(program) if isinstance(op, Collective) and not op.blocking]
        self.stream_backend = backend.stream() if nonblocking else None
        # Each non-blocking collective has buffers of its own: several are in
        # flight at once, as DDP's buckets are.
        owner = self.stream_backend or backend
        self._own_buffers = {i: self._buffers_for(owner, op) for i, op in nonblocking}
        # Buffers of isends and irecvs in flight, reused by size once their wait completes them:
        # one shared buffer would let an irecv land in a collective's checked bytes.
        self._p2p_pool: dict[int, list] = {}
        self.current: tuple[int, str] | None = None
        self.current_since = 0.0
        self._watchdog_stop = threading.Event()

    def _in_group(self, name: str) -> tuple[int, int]:
        """(group rank, group size) of this rank in its group of ``name``."""
        return self.pg.index(name, self.rank), len(self.pg.members(name, self.rank))

    def _output_bytes(self) -> int:
        sizes = [output_nbytes(op, *self._in_group(op.group)) for op in self.program if isinstance(op, Collective)]
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
            # "hang": the whole process stops, as a SIGSTOP from outside stops
            # it, heartbeat and watchdog too; the launcher names it as hung and
            # kills it.  (Should something continue it, it stays stuck here.)
            print(f"rank {self.rank}: injected fault: stopping in op {index} ({kind})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            threading.Event().wait()

    def run(self) -> list[tuple[int, Record]]:
        """(repeat, record) of every timed operation."""
        watchdog = threading.Thread(target=self._watch, name="distsim-watchdog", daemon=True)
        watchdog.start()
        records: list[tuple[int, Record]] = []
        try:
            for repeat in range(-self.options.warmup, self.options.repeats):
                rows = self._run_once()
                if repeat >= 0:
                    records.extend((repeat, row) for row in rows)
            self._status("done")
        finally:
            self._watchdog_stop.set()
            self.status.close()
        return records

    def _run_once(self) -> list[Record]:
        b = self.b
        self.current, self.current_since = (-1, "barrier"), time.monotonic()
        b.barrier()
        base = b.now_s()
        stream = Stream(self, self.stream_backend, base) if self.stream_backend is not None else None
        repeat = _Repeat(base, stream)
        try:
            for index, op in enumerate(self.program):
                self._run_op(index, op, repeat)
            if stream is not None or repeat.in_flight:
                self._drain(repeat)
        except BaseException:
            if stream is not None:
                # Do not wait for a stream that may be stuck: the error must
                # reach the rank's worker, which ends the run.
                stream.abandon()
            raise
        if stream is not None:
            stream.close()
            repeat.rows.extend(stream.rows)
        return repeat.rows

    def _run_op(self, index: int, op, repeat: _Repeat) -> None:
        """Run the operation at ``index``: a blocking one is timed and recorded now; a
        non-blocking one starts, and its record comes with its wait."""
        b = self.b
        t = type(op)
        # The communicator of the op's group (the world's is the backend itself).
        view = b.group_view(op.group) if t is not Compute and t is not Wait else b
        if self.options.check and t is Collective:
            b.fill(self._buffers(index, op)[0], self._in_group(op.group)[0] + 1)
        if self.timing == "aligned":
            self.current, self.current_since = (index, "barrier"), time.monotonic()
            b.barrier()
        self._enter(index, op.kind)
        if t is Collective and not op.blocking:
            repeat.handles[op.handle] = index
            if repeat.stream is not None:
                repeat.stream.submit(index, op, self._own_buffers[index], self.stream_backend.group_view(op.group))
                return
        if t is Isend or t is Irecv:
            buf = self._take(op.nbytes)
            start = b.now_s()
            post = view.post_send if t is Isend else view.post_recv
            repeat.in_flight[op.handle] = (index, op, view, post(buf, op.peer, op.tag), buf, start)
            self.current = None
            return
        native = None
        if t is Collective and self.options.mode == "native":
            native = self._native.get(index)
            if native is None:
                buf, _, out = self._buffers(index, op)
                native = self._native[index] = view.prepare_collective(op, buf[: op.nbytes], out, True)
        repeat.rows.append(self._timed(index, op, view, native, repeat))

    def _timed(self, index: int, op, view: RealBackend, native, repeat: _Repeat) -> Record:
        """Run the operation at ``index`` on ``view`` (``native``: its prepared library call)
        until it is complete; its record."""
        b = self.b
        t = type(op)
        start = b.now_s()
        peer, nbytes, flops, algorithm = -1, 0, 0.0, ""
        if t is Compute:
            # Sized by FLOPs alone (nbytes, gemm and precision are the
            # simulator's roofline), or by bytes where it has no FLOPs;
            # the record keeps both so that predicted and measured rows
            # join on the same key.
            if op.flops:
                self._compute(op.flops)
            else:
                self._move(op.nbytes)
            flops, nbytes = op.flops, op.nbytes
        elif t is Send:
            view.send(self.buf[: op.nbytes], op.peer, op.tag)
            peer, nbytes = op.peer, op.nbytes
        elif t is Recv:
            view.recv(self.buf[: op.nbytes], op.peer, op.tag)
            peer, nbytes = op.peer, op.nbytes
        elif t is Collective:
            # Without a communication stream a non-blocking collective
            # runs here, at issue: its record is still its own time.
            peer, nbytes, algorithm = root_peer(op), op.nbytes, op.algorithm
            if native is not None:
                native()
            else:
                self.run_algorithm(op, view, *self._buffers(index, op))
        elif t is Wait:
            for handle in op.handles:
                entry = repeat.in_flight.pop(handle, None)
                if entry is not None:
                    repeat.rows.append(self._complete(entry, repeat.base))
                elif repeat.stream is not None and handle in repeat.handles:
                    repeat.stream.wait([repeat.handles[handle]])
        b.synchronize()
        end = b.now_s()
        self.current = None
        if self.options.check and t is Collective:
            self.check_result(op, view, *self._buffers(index, op)[::2])
        return Record(self.rank, index, self.record_groups[index], op.kind, algorithm, peer, nbytes, flops,
                      start - repeat.base, end - repeat.base, math.nan)

    def _drain(self, repeat: _Repeat) -> None:
        """The program ends when its communication stream is drained and its isends and irecvs are complete."""
        self._enter(len(self.program), "wait")
        for entry in list(repeat.in_flight.values()):
            repeat.rows.append(self._complete(entry, repeat.base))
        repeat.in_flight.clear()
        if repeat.stream is not None:
            repeat.stream.wait(list(repeat.handles.values()))
        self.current = None

    def _complete(self, entry: tuple, base: float) -> Record:
        """Wait for an isend or irecv; its record ends when this rank sees it complete."""
        index, op, view, request, buf, start = entry
        view.wait(request)
        self.b.synchronize()
        end = self.b.now_s()
        self._p2p_pool.setdefault(op.nbytes, []).append(buf)
        return Record(self.rank, index, self.record_groups[index], op.kind, "", op.peer, op.nbytes, 0.0,
                      start - base, end - base, math.nan)

    def _take(self, nbytes: int):
        free = self._p2p_pool.get(nbytes)
        return free.pop() if free else self.b.buffer(nbytes)

    def _buffers_for(self, owner: RealBackend, op: Collective) -> tuple:
        """(buffer, scratch, output) for one collective: scratch only where
        lowered steps reduce into it, output only where the op writes one."""
        semantics = SEMANTICS[op.op]
        reduces = self.options.mode == "algorithm" and semantics.reduces
        writes_out = semantics.writes_output
        out_bytes = max(op.nbytes, output_nbytes(op, *self._in_group(op.group)))
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

    def _move(self, nbytes: int) -> None:
        """Copy ``nbytes // 2`` bytes (``nbytes`` read and written), a piece at a time."""
        left = nbytes // 2
        piece = len(self._move_src)
        copy_ = self.b.copy_
        while left >= piece > 0:
            copy_(self._move_dst, self._move_src)
            left -= piece
        if left:
            copy_(self._move_dst[:left], self._move_src[:left])

    def run_algorithm(self, op: Collective, b: RealBackend, buf, scratch, out) -> None:
        """Run ``op`` as the lowered steps of its algorithm (algorithm mode) on ``b``, the view of
        its group: peers are group ranks, on the group's own communicator for steps.  ``buf``,
        ``scratch`` and ``out``: the op's buffer, what steps reduce into, its output.  The rank's
        main thread and its communication stream (``executors.real.stream``) both run collectives
        this way."""
        rank, size = b.rank, b.size
        alltoall = op.op in ("alltoall", "alltoallv")
        if alltoall:
            # This rank's own block is a local copy, not a transfer.
            sends, recvs = exchange_layouts(op, rank, size)
            mine, out_block = sends[rank], recvs[rank]
            b.copy_(out[out_block[0]: out_block[0] + out_block[1]], buf[mine[0]: mine[0] + mine[1]])
        servers = (group_server_groups(self.pg.members(op.group, self.rank), self.groups)
                   if op.algorithm == "hierarchical" else None)
        for step in lower(op, rank, size, servers):
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

    # -- result checks (check=True): every rank started with bytes group rank + 1 -------

    def check_result(self, op: Collective, view: RealBackend, buf, out) -> None:
        """Raise ``RealRunError`` unless ``buf`` and ``out`` hold what ``op`` leaves on this rank of
        ``view`` (its group) when every rank started with bytes of its group rank + 1
        (``SEMANTICS[op.op].expected``): for ``check=True``, on the main thread and the stream alike."""
        data = {"buffer": self.b.to_numpy(buf[: op.nbytes]), "output": None}
        for expect in SEMANTICS[op.op].expected(op, view.rank, view.size):
            if data[expect.where] is None:
                data[expect.where] = self.b.to_numpy(out)
            values = data[expect.where][expect.offset: expect.offset + expect.nbytes]
            if len(values) and not np.all(values == expect.value):
                bad = int(np.flatnonzero(values != expect.value)[0])
                on = f" on group {op.group} (group rank {view.rank} of {view.size})" if op.group else ""
                raise RealRunError(
                    f"rank {self.rank}: {op.op} ({self.options.mode} {op.algorithm}){on} gave a wrong result: "
                    f"{expect.what} should be {expect.value} but byte {bad} is {int(values[bad])}"
                )
