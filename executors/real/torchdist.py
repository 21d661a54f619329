"""The torch.distributed executor: gloo on CPU, NCCL on NVIDIA GPUs.

Two ways to start it:

- inside a torchrun job:
  ``torchrun --standalone --nproc-per-node=N -m experiments.run S.yaml --backend torch``;
  every process runs its rank and rank 0 writes the result;
- from a plain process: ``TorchExecutor().run(scenario)`` launches
  ``python -m torch.distributed.run`` itself (see ``executors.real.launch``), with a
  timeout that ends a dead or stuck run and leaves no process behind.

What the libraries lack, and what this backend does instead (``EMULATED``
and ``PADDED_WHEN_UNEVEN`` say so, for ``validate`` to report):

- gloo has no reduce-scatter of its own: torch's gloo process group runs
  ``reduce_scatter`` as one all-reduce per block, so its cost is all-reduce
  traffic, not Thakur's (p-1)/p n beta.
- neither gloo nor the equal-block tensor calls take blocks of unequal size
  (``nbytes`` not divisible by p): allgather and reduce-scatter then pad every
  block to the largest (at most one byte more, ``block_layout``) and copy the
  real bytes in and out.  Alltoall needs no padding: ``all_to_all_single``
  takes split sizes.
- gloo's scatter and gather take blocks of one size only: with uneven
  blocks they pad as allgather does.  Alltoallv is ``all_to_all_single``
  with the per-peer counts as split sizes.
- process groups: every rank calls ``new_group`` for every group of every
  name, in the same order (torch requires it), with ``sort_ranks=False`` so
  that the process group's ranks are the group's own numbering; the calls
  that name a peer or root take global ranks, which a group's view
  translates to.
- 0-byte messages need no special case: gloo and NCCL send, receive and
  reduce empty tensors (checked with torch 2.13).

torch is imported only here and only when needed, so the rest of the package
imports without it.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import socket
import sys
from datetime import timedelta

from executors.real.backend import KERNEL_N, LOCAL_RANK_ENV, LOCAL_SIZE_ENV, NETWORK_ENV, RealBackend
from executors.real.executor import RealExecutor
from workloads.collectives import alltoall_output_layout, block_layout, scatter_layout
from workloads.groups import ProcessGroups

# The port the ranks of a multi-node torchrun job meet at, on the first node.
RDZV_PORT = 29500

# (process-group backend, collective) -> what actually runs.
EMULATED: dict[tuple[str, str], str] = {
    ("gloo", "reduce_scatter"): "all_reduce",
}
# Collectives whose unequal blocks are padded to the largest block, on every backend.
PADDED_WHEN_UNEVEN = ("allgather", "reduce_scatter", "scatter", "gather")
# Padded collectives whose padded output is p blocks (the others' input is).
_GATHERS = ("allgather", "gather")

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def inside_torchrun_job() -> bool:
    """True when this process was started by torchrun (or set up as one of its workers)."""
    return all(var in os.environ for var in _TORCHRUN_VARS)


class TorchBackend(RealBackend):
    name = "torch"

    def __init__(self, rank: int, size: int, device, pg_backend: str, with_stream: bool = True,
                 timeout=None):
        import torch
        import torch.distributed as dist

        self.torch = torch
        self.dist = dist
        self.rank = rank
        self.size = size
        self.device = device
        self.pg_backend = pg_backend
        self.cuda = device.type == "cuda"
        self.timeout = timeout
        # The group's world ranks in group-rank order; None on the world (group rank = global rank).
        self.members: tuple[int, ...] | None = None
        # torch 2.13 renamed the equal-block calls (the old names warn); older torch has only the old.
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        # Collective steps get a process group of their own, so their messages
        # can never match a user's send or receive (the group has every rank,
        # so its group ranks are the global ranks the steps name).
        self.steps = dist.new_group(list(range(size)), timeout=timeout)
        # Native collectives of the main thread use the default group; the
        # communication stream (non-blocking collectives, run from a second
        # thread) has groups of its own, made now while every rank is here.
        self.group = None
        self.cuda_stream = None
        self._stream = None
        if with_stream:
            stream = copy.copy(self)
            stream.group = dist.new_group(list(range(size)), timeout=timeout)
            stream.steps = dist.new_group(list(range(size)), timeout=timeout)
            # On a GPU the stream's collectives go on a CUDA stream of their own,
            # so that they overlap the main thread's kernels as NCCL's do in DDP.
            stream.cuda_stream = torch.cuda.Stream(device) if self.cuda else None
            stream._pads = {}
            stream._stream = None
            self._stream = stream
        if self.cuda:
            # NCCL communicators start lazily; the first batched point-to-point
            # call on a group must involve every rank, so start it here with a
            # collective that does.
            for group in [self.steps] + ([self._stream.group, self._stream.steps] if self._stream else []):
                dist.all_reduce(torch.zeros(1, device=device), group=group)
            torch.cuda.synchronize()
        gen = torch.Generator(device="cpu").manual_seed(rank)
        self._a = torch.rand((KERNEL_N, KERNEL_N), generator=gen, dtype=torch.float32).to(device)
        self._b = torch.rand((KERNEL_N, KERNEL_N), generator=gen, dtype=torch.float32).to(device)
        self._c = torch.empty((KERNEL_N, KERNEL_N), dtype=torch.float32, device=device)
        self._pads: dict[tuple[str, int], tuple] = {}

    @classmethod
    def from_environment(cls, timeout_s: float = 120.0) -> "TorchBackend":
        """This rank of a torchrun job: RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous from the environment."""
        import torch
        import torch.distributed as dist

        missing = [var for var in _TORCHRUN_VARS if var not in os.environ]
        if missing:
            raise RuntimeError(f"torch backend: {', '.join(missing)} not set; start the ranks with torchrun")
        rank = int(os.environ["RANK"])
        size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        # Longer than the runner's per-operation watchdog, so that a stuck run
        # is ended by the watchdog, which names every stuck rank and its op,
        # rather than by gloo's own timeout in whichever rank waited first.
        timeout = timedelta(seconds=2 * timeout_s + 10)
        # On an emulated network the bytes must cross its links: gloo over TCP
        # (NCCL would take NVLink or shared memory between GPUs of this machine).
        emulated = os.environ.get(NETWORK_ENV) == "emulated"
        if torch.cuda.is_available() and dist.is_nccl_available() and not emulated:
            device = torch.device(f"cuda:{local_rank}")
            # gather_object and barrier on NCCL use the current device.
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
            pg_backend = "nccl"
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo", timeout=timeout)
            pg_backend = "gloo"
        backend = cls(rank, size, device, pg_backend, timeout=timeout)
        backend.local_rank = local_rank
        backend.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return backend

    def stream(self):
        return self._stream

    def _global(self, group_rank: int) -> int:
        """The global rank torch's calls want for this view's ``group_rank``."""
        return group_rank if self.members is None else self.members[group_rank]

    def _new_group(self, members: tuple[int, ...]):
        dist = self.dist
        if "sort_ranks" in inspect.signature(dist.new_group).parameters:
            return dist.new_group(list(members), timeout=self.timeout, sort_ranks=False)
        if list(members) != sorted(members):
            raise RuntimeError(f"torch {self.torch.__version__}: new_group sorts its ranks, so group {list(members)} "
                               "(not in rank order) would be numbered differently; a torch whose new_group "
                               "takes sort_ranks keeps the order")
        return dist.new_group(list(members), timeout=self.timeout)

    def _open_group(self, groups: ProcessGroups, name: str):
        view = None
        for members in groups.family(name):
            # Every rank makes every group, members or not, in the same order.
            group, steps = self._new_group(members), self._new_group(members)
            if self.rank not in members:
                continue
            view = self._copy_for_group()
            view.group, view.steps = group, steps
            view.members = tuple(members)
            view.rank, view.size = members.index(self.rank), len(members)
            view._pads, view._stream = {}, None
            if self.cuda:
                # NCCL communicators start lazily (see __init__); members only, in group order.
                for pg in (group, steps):
                    self.dist.all_reduce(self.torch.zeros(1, device=self.device), group=pg)
                self.torch.cuda.synchronize()
        return view

    @property
    def transport(self) -> str:
        return f"{self.pg_backend} (torch {self.torch.__version__})"

    def pin_to_core(self) -> str:
        where = super().pin_to_core()
        if where.startswith("core"):
            # One core: more intra-op threads would only take turns on it.
            self.torch.set_num_threads(1)
        return where

    # -- the RealBackend calls -----------------------------------------------------

    def barrier(self) -> None:
        if self.cuda:
            self.dist.barrier(device_ids=[self.device.index])
        else:
            self.dist.barrier()

    def synchronize(self) -> None:
        # Kernels and NCCL calls return before the GPU has run them.  Only this
        # thread's CUDA stream: the other thread's work is not this one's time.
        if self.cuda:
            self.torch.cuda.current_stream(self.device).synchronize()

    def enter_thread(self) -> None:
        if self.cuda:
            # The current device and stream are per thread.
            self.torch.cuda.set_device(self.device)
            self.torch.cuda.set_stream(self.cuda_stream)

    def buffer(self, nbytes: int):
        return self.torch.zeros(nbytes, dtype=self.torch.uint8, device=self.device)

    def fill(self, buf, value: int) -> None:
        buf.fill_(value % 256)

    def to_numpy(self, buf):
        return buf.cpu().numpy()

    def send(self, buf, peer: int, tag: int) -> None:
        # NCCL ignores tags; messages between a pair keep their order.
        self.dist.send(buf, dst=self._global(peer), group=self.group, tag=tag)

    def recv(self, buf, peer: int, tag: int) -> None:
        self.dist.recv(buf, src=self._global(peer), group=self.group, tag=tag)

    def post_send(self, buf, peer: int, tag: int):
        return self.dist.isend(buf, dst=self._global(peer), group=self.group, tag=tag)

    def post_recv(self, buf, peer: int, tag: int):
        return self.dist.irecv(buf, src=self._global(peer), group=self.group, tag=tag)

    # A step's transfers are posted together at ``waitall``: NCCL runs the
    # sends and receives between one pair on one stream, so a rank that sends
    # to and receives from the same peer deadlocks unless they are grouped
    # (batch_isend_irecv); the runner always calls waitall right after posting.
    def isend(self, buf, peer: int, tag: int):
        return self.dist.P2POp(self.dist.isend, buf, self._global(peer), group=self.steps, tag=tag)

    def irecv(self, buf, peer: int, tag: int):
        return self.dist.P2POp(self.dist.irecv, buf, self._global(peer), group=self.steps, tag=tag)

    def waitall(self, requests) -> None:
        if not requests:
            return
        for work in self.dist.batch_isend_irecv(list(requests)):
            work.wait()

    def add_(self, dst, src) -> None:
        dst.add_(src)  # uint8 wraps modulo 256, as MPI's UNSIGNED_CHAR sum does

    def copy_(self, dst, src) -> None:
        dst.copy_(src)

    def matmul(self, rows: int) -> None:
        self.torch.matmul(self._a[:rows], self._b, out=self._c[:rows])

    def gather(self, obj):
        out = [None] * self.size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def share(self, obj):
        box = [obj if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def processor_name(self) -> str:
        return socket.gethostname()

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    # -- native collectives ----------------------------------------------------------

    def _padded(self, kind: str, block: int):
        """Reused (input, output) tensors for ``kind`` with blocks padded to ``block`` bytes."""
        key = (kind, block)
        if key not in self._pads:
            p = self.size
            if kind in _GATHERS:
                self._pads[key] = (self.buffer(block), self.buffer(p * block))
            else:
                self._pads[key] = (self.buffer(p * block), self.buffer(block))
        return self._pads[key]

    def collective(self, op, buf, out, blocking: bool):
        dist, p = self.dist, self.size
        async_op = not blocking
        kind = op.op
        if kind == "allreduce":
            return dist.all_reduce(buf, op=dist.ReduceOp.SUM, async_op=async_op, group=self.group)
        if kind == "broadcast":
            return dist.broadcast(buf, src=self._global(op.root), async_op=async_op, group=self.group)
        if kind == "reduce":
            return dist.reduce(buf, dst=self._global(op.root), op=dist.ReduceOp.SUM, async_op=async_op,
                               group=self.group)
        if kind == "barrier":
            if self.cuda:
                return dist.barrier(async_op=async_op, group=self.group, device_ids=[self.device.index])
            return dist.barrier(async_op=async_op, group=self.group)
        if kind == "alltoallv":
            total = sum(op.recv_nbytes)
            return dist.all_to_all_single(out[:total], buf, output_split_sizes=list(op.recv_nbytes),
                                          input_split_sizes=list(op.send_nbytes), async_op=async_op,
                                          group=self.group)
        layout = block_layout(op.nbytes, p)
        off, size = layout[self.rank]
        even = op.nbytes % p == 0
        if kind in ("scatter", "gather"):
            return self._scatter_gather(op, buf, layout, even, async_op)
        if kind == "allgather":
            if even:
                # In place: this rank's block is the input, the whole buffer the output.
                return self._all_gather(buf, buf[off: off + size], async_op=async_op, group=self.group)
            block = layout[0][1]
            pad_in, pad_out = self._padded(kind, block)
            pad_in[:size].copy_(buf[off: off + size])
            work = self._all_gather(pad_out, pad_in, async_op=async_op, group=self.group)

            def unpad():
                for j, (o, s) in enumerate(layout):
                    buf[o: o + s].copy_(pad_out[j * block: j * block + s])
            return _then(work, unpad)
        if kind == "reduce_scatter":
            # The result lands in this rank's block of the buffer, where the
            # lowered algorithm leaves it too.
            if even:
                recv = out[:size]
                work = self._reduce_scatter(recv, buf, op=dist.ReduceOp.SUM, async_op=async_op, group=self.group)
                return _then(work, lambda: buf[off: off + size].copy_(recv))
            block = layout[0][1]
            pad_in, pad_out = self._padded(kind, block)
            for j, (o, s) in enumerate(layout):
                pad_in[j * block: j * block + s].copy_(buf[o: o + s])
            work = self._reduce_scatter(pad_out, pad_in, op=dist.ReduceOp.SUM, async_op=async_op, group=self.group)
            return _then(work, lambda: buf[off: off + size].copy_(pad_out[:size]))
        if kind == "alltoall":
            out_layout = alltoall_output_layout(op.nbytes, self.rank, p)
            total = sum(s for _, s in out_layout)
            return dist.all_to_all_single(out[:total], buf, output_split_sizes=[s for _, s in out_layout],
                                          input_split_sizes=[s for _, s in layout], async_op=async_op, group=self.group)
        raise ValueError(f"torch: no native call for {kind}")

    def _scatter_gather(self, op, buf, layout, even: bool, async_op: bool):
        # Group rank j's block has block_layout's size j and lies where
        # scatter_layout puts it (rotated: the root's first).  The root's own
        # block goes through a pad, so that no call reads and writes one
        # tensor; uneven blocks all do (gloo wants one size).
        dist, p, me, root = self.dist, self.size, self.rank, op.root
        at = [off for off, _ in scatter_layout(op.nbytes, p, root)]
        sizes = [size for _, size in layout]
        block = sizes[0]
        mine = buf[at[me]: at[me] + sizes[me]]
        pad_in, pad_out = self._padded(op.op, block)
        direct = even and me != root
        if op.op == "scatter":
            chunks = None
            if me == root:
                if even:
                    chunks = [buf[at[j]: at[j] + block] for j in range(p)]
                else:
                    for j in range(p):
                        pad_in[j * block: j * block + sizes[j]].copy_(buf[at[j]: at[j] + sizes[j]])
                    chunks = [pad_in[j * block: (j + 1) * block] for j in range(p)]
            recv = mine if direct else pad_out[:block]
            work = dist.scatter(recv, chunks, src=self._global(root), group=self.group, async_op=async_op)
            # The root's own block never moved.
            return work if direct or me == root else _then(work, lambda: mine.copy_(pad_out[: sizes[me]]))
        if direct:
            send = mine
        else:
            send = pad_in[:block]
            send[: sizes[me]].copy_(mine)
        if me != root:
            return dist.gather(send, None, dst=self._global(root), group=self.group, async_op=async_op)
        chunks = [buf[at[j]: at[j] + block] if even else pad_out[j * block: (j + 1) * block] for j in range(p)]
        if even:
            # The root's own chunk comes back from its pad: the bytes it already has.
            return dist.gather(send, chunks, dst=self._global(root), group=self.group, async_op=async_op)
        work = dist.gather(send, chunks, dst=self._global(root), group=self.group, async_op=async_op)

        def unpad():
            for j in range(p):
                if j != root:
                    buf[at[j]: at[j] + sizes[j]].copy_(pad_out[j * block: j * block + sizes[j]])
        return _then(work, unpad)


def _then(work, after):
    """Run ``after`` once ``work`` completes: now when blocking (work is None), else at ``wait``."""
    if work is None:
        after()
        return None
    return _Finisher(work, after)


class _Finisher:
    """A work object plus what to do once it completes."""

    def __init__(self, work, then):
        self.work = work
        self.then = then

    def wait(self):
        self.work.wait()
        self.then()


class TorchExecutor(RealExecutor):
    """Run a scenario over torch.distributed; see the module docstring for the two ways to start it."""

    name = "torch"
    hostfile_hint = "torchrun meets its nodes at a rendezvous address: start one torchrun per node (experiments.sbatch)"

    @classmethod
    def unavailable_reason(cls) -> str:
        try:
            import torch.distributed as dist
        except ImportError:
            return "torch is not installed (pip install -e '.[torch]')"
        if not dist.is_available():
            return "this torch build has no torch.distributed"
        if not (dist.is_gloo_available() or dist.is_nccl_available()):
            return "this torch build has neither gloo nor NCCL"
        return ""

    @classmethod
    def inside_job(cls) -> bool:
        return inside_torchrun_job()

    @classmethod
    def announced_rank(cls) -> int | None:
        rank = os.environ.get("RANK", "")
        return int(rank) if inside_torchrun_job() and rank.isdigit() else None

    @classmethod
    def launch_command(cls, nranks: int, module_args: list[str], hostfile: str | None = None) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nranks}",
                "--max-restarts=0", "-m"] + list(module_args)

    @classmethod
    def emulated_launch_command(cls, nranks: int, module_args: list[str], network, run_dir: str) -> list[str]:
        # torchrun's agent, in this namespace, is out of the ranks' reach: each
        # rank starts in its own namespace with what torchrun would give it, and
        # rank 0 serves the store at its emulated address.
        plan = network.plan
        spec = [{"argv": network.exec_prefix(rank) + [sys.executable, "-m"] + list(module_args),
                 "env": {"RANK": str(rank), "WORLD_SIZE": str(nranks), "LOCAL_RANK": str(rank),
                         "LOCAL_WORLD_SIZE": str(nranks), "MASTER_ADDR": plan.rank_address[0],
                         "MASTER_PORT": str(RDZV_PORT), "GLOO_SOCKET_IFNAME": plan.rank_interface[rank],
                         NETWORK_ENV: "emulated", LOCAL_RANK_ENV: str(rank), LOCAL_SIZE_ENV: str(nranks)}}
                for rank in range(nranks)]
        path = os.path.join(run_dir, "spawn.json")
        with open(path, "w") as fh:
            json.dump(spec, fh)
        return [sys.executable, "-m", "executors.real.spawn", path]

    @classmethod
    def slurm_step(cls, nodes: int, ranks_per_node: int, cpus_per_rank: int, module_args: str) -> list[str]:
        """Lines of a batch script that start the ranks of ``python -m <module_args>`` under Slurm."""
        return [
            "# One torchrun per node starts the ranks of that node; all meet at the first node.",
            "TORCHRUN=${TORCHRUN:-torchrun}",
            'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
            "# The step gets the node's cores for its workers (a step's task gets one core otherwise).",
            f"srun --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={ranks_per_node * cpus_per_rank} "
            f'"$TORCHRUN" --nnodes "$SLURM_NNODES" --nproc-per-node {ranks_per_node} \\',
            f'    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$head:{RDZV_PORT}" \\',
            f"    -m {module_args}",
        ]

    def backend(self) -> RealBackend:
        return TorchBackend.from_environment(timeout_s=self.options.timeout_s)
