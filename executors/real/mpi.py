"""The MPI executor: runs a scenario with mpi4py, one process per rank.

Two ways to start it:

- inside an MPI job: ``mpiexec -n N python -m experiments.run S.yaml --backend mpi``
  (or ``srun``); every process runs its rank and rank 0 writes the result;
- from a plain process: ``MPIExecutor().run(scenario)`` launches
  ``mpiexec -n N`` itself (see ``executors.real.launch``), with a timeout that ends a
  dead or stuck run and leaves no process behind.

mpi4py is imported only here and only when needed, so the rest of the package
imports without it.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import numpy as np

from executors.real.backend import KERNEL_N, LOCAL_RANK_ENV, LOCAL_SIZE_ENV, NETWORK_ENV, RealBackend
from executors.real.executor import RealExecutor
from executors.real.options import RealRunError
from workloads.collectives import block_layout, exchange_layouts, scatter_layout
from workloads.groups import ProcessGroups

# Where MPI launchers announce a process's rank: MPICH/Hydra and PMI-2, Open MPI, PMIx, Slurm.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def inside_mpi_job() -> bool:
    """True when an MPI launcher (mpiexec, or srun with PMI-2, PMIx or none) started this process."""
    for var in ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var) is not None:
            return True
    # srun --mpi=none with Slurm's own PMI library sets only Slurm's variables.
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0")) > 1 and "SLURM_PROCID" in os.environ
    except ValueError:
        return False


def mpiexec_path() -> str | None:
    """``DISTSIM_MPIEXEC`` if set (it must exist), else mpiexec or mpirun on PATH."""
    chosen = os.environ.get("DISTSIM_MPIEXEC")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("mpiexec") or shutil.which("mpirun")


@functools.lru_cache(maxsize=None)
def _is_hydra(mpiexec: str) -> bool:
    """True for MPICH's Hydra mpiexec (the mpich wheel's), which takes -disable-auto-cleanup."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return "HYDRA" in out.stdout


class MPIBackend(RealBackend):
    name = "mpi"

    def __init__(self, comm=None, with_stream: bool = True):
        from mpi4py import MPI

        self.MPI = MPI
        self.world = comm if comm is not None else MPI.COMM_WORLD
        # Collective steps get a communicator of their own, so their messages
        # can never match a user's send or receive.
        self.steps = self.world.Dup()
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        # The communication stream's communicators, made now (every rank makes
        # them together); a second thread may call MPI only at THREAD_MULTIPLE.
        self._stream = None
        if with_stream and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            self._stream = MPIBackend(comm=self.world.Dup(), with_stream=False)
        rng = np.random.default_rng(self.rank)
        self._a = rng.random((KERNEL_N, KERNEL_N), dtype=np.float32)
        self._b = rng.random((KERNEL_N, KERNEL_N), dtype=np.float32)
        self._c = np.empty((KERNEL_N, KERNEL_N), dtype=np.float32)

    def stream(self):
        return self._stream

    def _open_group(self, groups: ProcessGroups, name: str):
        # One Split per name: the colour is the group, the key the rank's
        # position in it, so communicator ranks are the group ranks.
        members = groups.members(name, self.rank)
        MPI = self.MPI
        color = groups.group_id(name, self.rank) if members is not None else MPI.UNDEFINED
        key = groups.index(name, self.rank) if members is not None else 0
        comm = self.world.Split(color, key)
        if comm == MPI.COMM_NULL:
            return None
        view = self._copy_for_group()
        view.world = comm
        # The group's lowered steps get a communicator of their own, as the world's do.
        view.steps = comm.Dup()
        view.rank, view.size = comm.Get_rank(), comm.Get_size()
        view._stream = None
        return view

    @property
    def transport(self) -> str:
        return " ".join(self.MPI.Get_library_version().splitlines()[0].split())

    def barrier(self) -> None:
        self.world.Barrier()

    def now_s(self) -> float:
        return self.MPI.Wtime()

    def buffer(self, nbytes: int):
        return np.zeros(nbytes, dtype=np.uint8)

    def fill(self, buf, value: int) -> None:
        buf.fill(value % 256)

    def to_numpy(self, buf) -> np.ndarray:
        return buf

    def send(self, buf, peer: int, tag: int) -> None:
        self.world.Send([buf, self.MPI.BYTE], dest=peer, tag=tag)

    def recv(self, buf, peer: int, tag: int) -> None:
        self.world.Recv([buf, self.MPI.BYTE], source=peer, tag=tag)

    def isend(self, buf, peer: int, tag: int):
        return self.steps.Isend([buf, self.MPI.BYTE], dest=peer, tag=tag)

    def irecv(self, buf, peer: int, tag: int):
        return self.steps.Irecv([buf, self.MPI.BYTE], source=peer, tag=tag)

    def post_send(self, buf, peer: int, tag: int):
        return self.world.Isend([buf, self.MPI.BYTE], dest=peer, tag=tag)

    def post_recv(self, buf, peer: int, tag: int):
        return self.world.Irecv([buf, self.MPI.BYTE], source=peer, tag=tag)

    def waitall(self, requests) -> None:
        self.MPI.Request.Waitall(requests)

    def wait(self, request) -> None:
        request.Wait()

    def add_(self, dst, src) -> None:
        np.add(dst, src, out=dst)

    def copy_(self, dst, src) -> None:
        dst[...] = src

    def matmul(self, rows: int) -> None:
        np.matmul(self._a[:rows], self._b, out=self._c[:rows])

    def gather(self, obj):
        return self.world.gather(obj, root=0)

    def share(self, obj):
        return self.world.bcast(obj, root=0)

    def processor_name(self) -> str:
        return self.MPI.Get_processor_name()

    def collective(self, op, buf, out, blocking: bool):
        return self.prepare_collective(op, buf, out, blocking)()

    def prepare_collective(self, op, buf, out, blocking: bool):
        MPI, comm, p = self.MPI, self.world, self.size
        u8 = MPI.UNSIGNED_CHAR  # MPI_SUM is defined on it (not on MPI_BYTE); sums wrap mod 256
        kind = op.op
        if kind == "allreduce":
            args = (MPI.IN_PLACE, [buf, u8])
            call = comm.Allreduce if blocking else comm.Iallreduce
            return lambda: call(*args, op=MPI.SUM)
        if kind == "broadcast":
            call = comm.Bcast if blocking else comm.Ibcast
            return lambda: call([buf, u8], root=op.root)
        if kind == "reduce":
            send = MPI.IN_PLACE if self.rank == op.root else [buf, u8]
            call = comm.Reduce if blocking else comm.Ireduce
            return lambda: call(send, [buf, u8], op=MPI.SUM, root=op.root)
        if kind in ("alltoall", "alltoallv"):
            sends, recvs = exchange_layouts(op, self.rank, p)
            send = [buf, [s for _, s in sends], [o for o, _ in sends], u8]
            recv = [out, [s for _, s in recvs], [o for o, _ in recvs], u8]
            call = comm.Alltoallv if blocking else comm.Ialltoallv
            return lambda: call(send, recv)
        layout = block_layout(op.nbytes, p)
        counts = [size for _, size in layout]
        displs = [off for off, _ in layout]
        if kind in ("scatter", "gather"):
            # The root's buffer holds every block where scatter_layout puts it
            # (rotated, the root's first, as MPICH's binomial tree wants them);
            # the root's own block stays in place (MPI_IN_PLACE), and every
            # other rank's block lands at its own offset of its buffer.
            at = [off for off, _ in scatter_layout(op.nbytes, p, op.root)]
            whole = [buf, counts, at, u8]
            mine = [buf[at[self.rank]: at[self.rank] + counts[self.rank]], u8]
            is_root = self.rank == op.root
            if kind == "scatter":
                send, recv = (whole, MPI.IN_PLACE) if is_root else (None, mine)
                call = comm.Scatterv if blocking else comm.Iscatterv
            else:
                send, recv = (MPI.IN_PLACE, whole) if is_root else (mine, None)
                call = comm.Gatherv if blocking else comm.Igatherv
            return lambda: call(send, recv, root=op.root)
        if kind == "allgather":
            args = (MPI.IN_PLACE, [buf, counts, displs, u8])
            call = comm.Allgatherv if blocking else comm.Iallgatherv
            return lambda: call(*args)
        if kind == "reduce_scatter":
            # The result lands in this rank's block of the buffer, where the
            # lowered algorithm leaves it too.
            off, size = layout[self.rank]
            recv = out[:size]

            def place():
                buf[off: off + size] = recv

            if blocking:
                def reduce_scatter():
                    comm.Reduce_scatter([buf, u8], [recv, u8], recvcounts=counts, op=MPI.SUM)
                    place()
                return reduce_scatter
            return lambda: _Finisher(
                comm.Ireduce_scatter([buf, u8], [recv, u8], recvcounts=counts, op=MPI.SUM), place)
        if kind == "barrier":
            call = comm.Barrier if blocking else comm.Ibarrier
            return call
        raise ValueError(f"mpi: no native call for {kind}")


class _Finisher:
    """A request plus what to do once it completes."""

    def __init__(self, request, then):
        self.request = request
        self.then = then

    def Wait(self):  # noqa: N802  (mpi4py's spelling)
        self.request.Wait()
        self.then()


class MPIExecutor(RealExecutor):
    """Run a scenario over MPI; see the module docstring for the two ways to start it."""

    name = "mpi"
    takes_hostfile = True
    # UCX binds a rank to one interface (UCX_NET_DEVICES); given all of a ring
    # node's interfaces, MPI_Init hung.
    one_interface_per_rank = True

    @classmethod
    def unavailable_reason(cls) -> str:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            return "mpi4py is not installed (pip install -e '.[mpi]' installs mpi4py and the mpich wheel)"
        if not inside_mpi_job() and mpiexec_path() is None:
            return "no mpiexec found on PATH (pip install mpich, or load your cluster's MPI module)"
        return ""

    @classmethod
    def inside_job(cls) -> bool:
        return inside_mpi_job()

    @classmethod
    def announced_rank(cls) -> int | None:
        if not inside_mpi_job():
            return None
        for var in _RANK_VARS:
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var])
        return None

    @classmethod
    def launch_command(cls, nranks: int, module_args: list[str], hostfile: str | None = None) -> list[str]:
        mpiexec = mpiexec_path()
        if mpiexec is None:
            raise RealRunError("no mpiexec found on PATH (pip install mpich, or load your cluster's MPI module)")
        cmd = [mpiexec, "-n", str(nranks)]
        if _is_hydra(mpiexec):
            # On a rank's failure Hydra SIGKILLs the others at once, which
            # leaves no trace of who went first; without auto-cleanup it only
            # tells them (SIGUSR1, see executors.real.worker), and the launcher,
            # having noted the rank that failed, ends the rest itself.
            cmd.append("-disable-auto-cleanup")
        if hostfile:
            cmd += ["-f", hostfile]
        return cmd + [sys.executable, "-m"] + list(module_args)

    @classmethod
    def emulated_launch_command(cls, nranks: int, module_args: list[str], network, run_dir: str) -> list[str]:
        mpiexec = mpiexec_path()
        if mpiexec is None:
            raise RealRunError("no mpiexec found on PATH (pip install mpich, or load your cluster's MPI module)")
        if not _is_hydra(mpiexec):
            raise RealRunError(f"an emulated network needs MPICH's mpiexec (Hydra), which starts each rank with a "
                               f"command of its own; {mpiexec} is not")
        # Every rank is remote to every other (no shared memory: NOLOCAL), and
        # UCX moves bytes over TCP on the rank's own emulated interface only.
        # UCX's rendezvous by TCP "put" stalled some transfers for seconds: four
        # 2-rank all-reduces of 16 MiB across a 100 Mbit/s link took 4.2-9.1 s,
        # each rank's, where 5.6 s was predicted (few TCP retransmissions, no
        # timeouts); without it every rank took 5.61-5.64 s.
        cmd = [mpiexec, "-disable-auto-cleanup", "-genv", "MPIR_CVAR_NOLOCAL", "1", "-genv", "UCX_TLS", "tcp",
               "-genv", "UCX_TCP_PUT_ENABLE", "n",
               "-genv", NETWORK_ENV, "emulated", "-genv", LOCAL_SIZE_ENV, str(nranks)]
        if nranks > (os.cpu_count() or 1):
            # More ranks than cores: a rank that waits yields its core instead of
            # spinning, to the ranks that move bytes (8 ranks on 2 cores: a 16 MiB
            # alltoall over a tree's uplinks 23% -> 10.5% slower than predicted).
            cmd += ["-genv", "MPIR_CVAR_CH4_PROGRESS_THROTTLE", "1"]
        for rank in range(nranks):
            if rank:
                cmd.append(":")
            cmd += ["-n", "1", "-env", "UCX_NET_DEVICES", network.plan.rank_interface[rank],
                    "-env", LOCAL_RANK_ENV, str(rank)]
            cmd += network.exec_prefix(rank) + [sys.executable, "-m"] + list(module_args)
        return cmd

    @classmethod
    def slurm_step(cls, nodes: int, ranks_per_node: int, cpus_per_rank: int, module_args: str) -> list[str]:
        """Lines of a batch script that start the ranks of ``python -m <module_args>`` under Slurm."""
        return [
            "# srun starts the ranks; MPI finds them through Slurm's PMI. MPICH (and the mpich wheel)",
            "# speaks pmi2, Open MPI pmix: `srun --mpi=list` shows what this cluster offers, and",
            "# SRUN_MPI=pmix sbatch THIS_SCRIPT switches.",
            'SRUN_MPI=${SRUN_MPI:-pmi2}',
            f'srun --mpi="$SRUN_MPI" --nodes={nodes} --ntasks-per-node={ranks_per_node} '
            f'"$PYTHON" -m {module_args}',
        ]

    def backend(self) -> RealBackend:
        return MPIBackend()
