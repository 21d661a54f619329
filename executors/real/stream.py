"""A rank's communication stream: where its non-blocking collectives run."""
from __future__ import annotations

import math
import queue
import threading
from typing import TYPE_CHECKING

from executors.real.backend import RealBackend
from simcore.result import Record
from workloads.collectives import root_peer
from workloads.ops import Collective

if TYPE_CHECKING:
    from executors.real.runner import RankRunner


class Stream:
    """A rank's communication stream: its non-blocking collectives run here one
    after another, in issue order, on communicators of their own, while the
    rank's main thread goes on, as NCCL runs DDP's gradient buckets (and as
    the simulator models them).  A record spans the collective's own start and
    end on the stream."""

    def __init__(self, runner: "RankRunner", backend: RealBackend, base: float):
        self.runner = runner
        self.b = backend
        self.base = base
        self.rows: list[Record] = []
        self.error: BaseException | None = None
        self._done: dict[int, threading.Event] = {}
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="distsim-comm-stream", daemon=True)
        self._thread.start()

    def submit(self, index: int, op: Collective, buffers: tuple, view: RealBackend) -> None:
        """Queue ``op``, to run on ``view``: this stream's communicator of the op's group."""
        self._done[index] = threading.Event()
        self._queue.put((index, op, buffers, view))

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
            index, op, (buf, scratch, out), view = item
            try:
                if self.error is None:
                    native = view.prepare_collective(op, buf[: op.nbytes], out, True) \
                        if runner.options.mode == "native" else None
                    start = b.now_s()
                    if native is not None:
                        native()
                    else:
                        runner.run_algorithm(op, view, buf, scratch, out)
                    b.synchronize()
                    end = b.now_s()
                    if runner.options.check:
                        runner.check_result(op, view, buf, out)
                    self.rows.append(Record(runner.rank, index, op.group, op.kind, op.algorithm, root_peer(op),
                                            op.nbytes, 0.0, start - self.base, end - self.base, math.nan))
            except BaseException as exc:  # re-raised in the main thread at its wait
                self.error = exc
            finally:
                self._done[index].set()
