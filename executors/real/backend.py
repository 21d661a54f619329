"""The interface every real backend (MPI, torch.distributed) implements for one rank.

A backend supplies point-to-point and native collective calls on byte
buffers, a barrier, a clock, a gather and a broadcast of rank 0's decision;
``executors.real.runner`` does the rest, the same for every backend.

Process groups: ``open_groups`` makes, before any timing, one communicator
(MPI) or process group (torch) per group of every name the scenario declares;
``group_view(name)`` is then this rank's view of its group of that name, a
backend whose ``rank``/``size`` are the group rank and size and whose peers
and roots are group ranks, as on an MPI sub-communicator.
"""
from __future__ import annotations

import copy
import os
import socket
import time
from abc import ABC, abstractmethod

import numpy as np

from workloads.groups import WORLD, ProcessGroups
from workloads.ops import Collective

# enough for BLAS to run near peak, small enough to hit a FLOP count closely.
KERNEL_N = 256
# Set by the launcher where the library cannot tell which ranks share this machine.
LOCAL_RANK_ENV = "DISTSIM_LOCAL_RANK"
LOCAL_SIZE_ENV = "DISTSIM_LOCAL_SIZE"
# "emulated" where the launcher started the ranks on an emulated network (executors.emulation).
NETWORK_ENV = "DISTSIM_NETWORK"


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
    # (process group) of their own; send/recv and post_send/post_recv carry
    # the users' messages.
    @abstractmethod
    def isend(self, buf, peer: int, tag: int): ...

    @abstractmethod
    def irecv(self, buf, peer: int, tag: int): ...

    @abstractmethod
    def waitall(self, requests) -> None:
        """Wait for requests from ``isend``/``irecv``."""

    def wait(self, request) -> None:
        """Wait for a request returned by a non-blocking ``collective``, ``post_send`` or ``post_recv``."""
        request.wait()

    def post_send(self, buf, peer: int, tag: int):
        """A user's non-blocking send (MPI ``Isend``) on the users' communicator; returns a request for ``wait``."""
        raise NotImplementedError(f"{self.name}: no non-blocking send (isend) in this backend")

    def post_recv(self, buf, peer: int, tag: int):
        """A user's non-blocking receive (MPI ``Irecv``); returns a request for ``wait``."""
        raise NotImplementedError(f"{self.name}: no non-blocking receive (irecv) in this backend")

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

    # -- process groups ---------------------------------------------------------

    def open_groups(self, groups: ProcessGroups) -> None:
        """Make every group's communicators, here and on the communication stream.

        Every rank calls it with the same ``groups`` (the libraries make
        communicators collectively, torch over all ranks), before timing starts.
        """
        views: dict[str, RealBackend | None] = {WORLD: self}
        for name in groups.names:
            if name != WORLD:
                views[name] = self._open_group(groups, name)
        self._views = views
        stream = self.stream()
        if stream is not None:
            stream.open_groups(groups)

    def _open_group(self, groups: ProcessGroups, name: str) -> "RealBackend | None":
        """This rank's view of its group of ``name`` (None if it is in none); called on every rank."""
        raise NotImplementedError(f"{self.name}: this backend runs on the world only, not on process groups "
                                  f"(group {name!r})")

    def _copy_for_group(self) -> "RealBackend":
        """A shallow copy of this backend, to become its view of one group: it opens no groups of its own."""
        view = copy.copy(self)
        view._views = None
        return view

    def group_view(self, name: str) -> "RealBackend":
        """This rank's view of its group of ``name`` (``open_groups`` first; the world is this backend)."""
        views = getattr(self, "_views", None)
        if name == WORLD and views is None:
            return self
        view = None if views is None else views.get(name)
        if view is None:
            raise ValueError(f"rank {self.rank}: no communicator for group {name!r} "
                             f"({'not opened' if views is None else 'this rank is in none of its groups'})")
        return view

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

    @abstractmethod
    def share(self, obj):
        """Rank 0's ``obj`` on every rank (a broadcast of a small Python object)."""

    def processor_name(self) -> str:
        return socket.gethostname()

    def pin_to_core(self) -> str:
        """Bind this process to one core of those it may use, if there is one per local rank.

        Returns the core, or why it did not pin.
        """
        if not hasattr(os, "sched_getaffinity"):
            return "not pinned (no CPU affinity on this system)"
        cores = sorted(os.sched_getaffinity(0))
        # On an emulated network every rank is on this machine, whatever the
        # library counts as local (MPI across namespaces sees one rank per node).
        local_rank = int(os.environ.get(LOCAL_RANK_ENV, self.local_rank))
        local_size = int(os.environ.get(LOCAL_SIZE_ENV, self.local_size))
        if local_size > len(cores):
            return f"not pinned ({local_size} ranks on {len(cores)} cores)"
        core = cores[local_rank]
        os.sched_setaffinity(0, {core})
        return f"core {core}"

    def close(self) -> None:
        pass
