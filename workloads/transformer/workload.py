"""The ``transformer`` workload: one training job's specs, and what it asks of each room.

``TransformerTraining`` holds the job's three specs (``spec``: the model, the
training setup, the parallel layout) and hands them to the lowering
(``lowering``), the memory model (``memory``), the FLOP accounting
(``flops``) and the step report (``report``).  A scenario writes the
training and layout fields flat under ``workload:`` (``global_batch: 64``,
``tp: 8``), the model's shape under ``model:``; each flat field goes to the
spec that owns it, and ``to_dict`` writes them back the same way.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from topologies.text import short, short_names
from workloads.base import ProgramSize, WorkloadBase, register
from workloads.collectives import lowered_size
from workloads.groups import Layout
from workloads.ops import Collective, Operation
from workloads.transformer.flops import hardware_flops_per_step, model_flops_per_step
from workloads.transformer.lowering import Lowering
from workloads.transformer.memory import MemoryReport, check_fits, memory_per_stage
from workloads.transformer.report import training_report
from workloads.transformer.spec import ModelSpec, ParallelSpec, TrainingSpec, load_model, stage_layers


def _flat(owner: str, spec: type, hidden: tuple[str, ...] = ()) -> dict[str, tuple[str, Any]]:
    return {f.name: (owner, f.default) for f in dataclasses.fields(spec) if f.name not in hidden}


# Each flat field a scenario may write: (the workload's field holding its
# spec, its default), in the order ``to_dict`` writes them.  ``optimizer`` is
# not one: Adam is the only optimizer, and the optimizer step's bytes are Adam's.
FLAT_FIELDS = {**_flat("training", TrainingSpec, hidden=("optimizer",)), **_flat("parallelism", ParallelSpec)}
_INTS = frozenset(name for name, (_, default) in FLAT_FIELDS.items() if type(default) is int)


@register
@dataclass(frozen=True, init=False)
class TransformerTraining(WorkloadBase):
    """``steps`` training steps of a decoder-only transformer over ``tp x pp x dp`` ranks.

    ``model``: a preset name (``gpt3_175b``, ``llama_70b``, ``mixtral_8x7b``),
    a model file or a mapping of the shape (``workloads.transformer.spec.ModelSpec``).
    The other fields, flat as a scenario writes them, are ``TrainingSpec``'s
    (held in ``training``) and ``ParallelSpec``'s (in ``parallelism``).
    """

    kind: ClassVar[str] = "transformer"

    # ``model`` as given (a preset's name or a file stays a name, so that
    # to_dict writes it back); ``model_spec`` is its shape, parsed once.
    model: Any = "gpt3_175b"
    training: TrainingSpec = TrainingSpec()
    parallelism: ParallelSpec = ParallelSpec()
    model_spec: ModelSpec = field(init=False, repr=False, compare=False)

    def __init__(self, model: Any = "gpt3_175b", training: TrainingSpec | None = None,
                 parallelism: ParallelSpec | None = None, **flat: Any):
        """``flat``: fields as a scenario writes them (``global_batch=64, tp=8``), over ``training``'s and
        ``parallelism``'s (the specs' defaults where those are not given)."""
        for name in flat:
            if name not in FLAT_FIELDS:
                raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {name!r}")
        # YAML writes 1e6 as a float: an integral float is that integer.
        flat = {name: int(value) if name in _INTS and isinstance(value, float) and value.is_integer() else value
                for name, value in flat.items()}
        # The specs validate and name the field (workload.tp, model.hidden, ...).
        spec = load_model(model, "workload.model")
        object.__setattr__(self, "model", model if isinstance(model, str) else spec)
        object.__setattr__(self, "model_spec", spec)
        bases = {"training": TrainingSpec() if training is None else training,
                 "parallelism": ParallelSpec() if parallelism is None else parallelism}
        for owner, base in bases.items():
            given = {name: value for name, value in flat.items() if FLAT_FIELDS[name][0] == owner}
            object.__setattr__(self, owner, dataclasses.replace(base, **given))
        self._check_split()

    def __getattr__(self, name: str) -> Any:
        # A flat field reads from its spec (``w.tp`` is ``w.parallelism.tp``), as a scenario names it.
        if name not in FLAT_FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, FLAT_FIELDS[name][0]), name)

    def _check_split(self) -> None:
        """ValueError naming the fields if the model does not split as the layout asks."""
        model, par = self.model_spec, self.parallelism
        t = par.tp
        for what, value in (("heads", model.heads), ("kv_heads", model.kv_heads), ("ffn_hidden", model.ffn_hidden)):
            if value % t:
                raise ValueError(f"workload.tp {t} must divide model.{what} {value} (each TP rank holds "
                                 f"{what} / tp of them)")
        if par.sequence_parallel and model.seq_len % t:
            raise ValueError(f"workload.sequence_parallel: tp {t} must divide model.seq_len {model.seq_len}")
        stage_layers(model.layers, par)  # the split, or why there is none
        if par.schedule == "interleaved" and par.pp < 2:
            raise ValueError("workload.schedule: interleaved needs pp >= 2")
        if par.ep > 1 and not model.moe:
            raise ValueError(f"workload.ep {par.ep} needs a mixture-of-experts model (model.experts > 1)")
        if model.moe and model.experts % par.ep:
            raise ValueError(f"workload.ep {par.ep} must divide model.experts {model.experts}")
        if par.dp:
            self._resolved(par.tp * par.pp * par.dp)

    # -- the parts -------------------------------------------------------------

    def parallel(self, nranks: int) -> ParallelSpec:
        return self._resolved(nranks)[0]

    def microbatches(self, nranks: int) -> int:
        return self._resolved(nranks)[1]

    def _resolved(self, nranks: int) -> tuple[ParallelSpec, int]:
        par = self.parallelism.resolve(nranks)
        training = self.training
        m = training.microbatches(par.dp)
        if par.schedule == "interleaved" and m % par.pp:
            raise ValueError(f"workload.schedule: interleaved needs the micro-batches per step (global_batch "
                             f"{training.global_batch} / (micro_batch {training.micro_batch} x dp {par.dp}) = {m}) "
                             f"to be a multiple of pp {par.pp}, as Megatron-LM does")
        return par, m

    def layout(self, nranks: int) -> Layout:
        par = self.parallel(nranks)
        return Layout(par.tp, par.pp, par.dp, par.ep)

    def process_groups(self, nranks: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """The layout's groups (tp, pp, dp, ep) and, with ep > 1, ``edp``.

        ``edp`` (expert data parallelism): the ranks of a DP group at the same
        position of their EP groups, which hold the same experts and reduce
        their gradients together: ``dp_group[j::ep]`` (Megatron-LM's
        expert-data-parallel group).
        """
        layout = self.layout(nranks)
        groups = dict(layout.groups())
        if layout.ep > 1:
            groups["edp"] = tuple(members[j::layout.ep] for members in groups["dp"] for j in range(layout.ep))
        return groups

    def memory(self, nranks: int) -> list[MemoryReport]:
        """Each pipeline stage's peak memory per GPU (``workloads.transformer.memory``)."""
        par = self.parallel(nranks)
        return memory_per_stage(self.model_spec, par, self.training, nranks)

    def check_fits(self, topology) -> None:
        """ValueError naming the stage, its bytes by kind, the GPU's memory and the excess, if a stage does not fit.

        The capacity is the smallest ``memory_bytes`` among the stage's ranks;
        nodes that do not state their memory (``math.inf``) fit anything.
        """
        capacities = getattr(topology, "rank_memory_bytes", None)
        if not capacities:
            return
        problems = []
        for report in self.memory(topology.nranks):
            capacity = min(capacities[r] for r in report.ranks)
            if math.isfinite(capacity):
                problem = check_fits([report], capacity)
                if problem:
                    problems.append((report.total_bytes - capacity, problem))
        if problems:
            worst = max(problems)[1]
            more = f" ({len(problems)} stages over)" if len(problems) > 1 else ""
            raise ValueError(f"workload does not fit in memory: {worst}{more}; try more tp or pp, a higher zero "
                             "stage, recompute, or a smaller micro_batch")

    # -- parameters per rank ------------------------------------------------------

    def rank_parameters(self, nranks: int, stage: int) -> tuple[int, int]:
        """(dense, expert) parameters one rank of pipeline ``stage`` holds.

        Dense: its TP share of attention, the router, norms (replicated over
        TP) and, for a dense model, the MLP; of the embedding (first stage)
        and the output layer and final norm (last stage).  Expert: its E/e
        experts' TP shares, reduced over ``edp``; with ep = 1 every DP rank
        holds all experts, and they count as dense (reduced over dp).
        """
        return self._lowering(nranks).stage_parameters(stage)

    # -- programs -------------------------------------------------------------------

    def _lowering(self, nranks: int) -> Lowering:
        par, m = self._resolved(nranks)
        return Lowering(self.model_spec, self.training, par, m)

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        lowering = self._lowering(nranks)
        stage_programs = [lowering.stage_program(s) for s in range(lowering.p)]
        layout = self.layout(nranks)
        # A stage's ranks share its list: 16,384 copies of a 5,700-operation program were 750 MB of pointers.
        return [stage_programs[layout.coordinates(r)["pp"]] for r in range(nranks)]

    def size(self, nranks: int, groups=None) -> ProgramSize:
        """Counted on one step of each stage's program, built from shared operations (no per-rank copies)."""
        lowering = self._lowering(nranks)
        per_stage_ranks = nranks // lowering.p
        sizes = {name: len(family[0]) for name, family in self.process_groups(nranks).items()}
        bounds: dict[tuple, tuple[int, int]] = {}
        total = ProgramSize()
        for s in range(lowering.p):
            program = lowering.stage_step(s, 0)
            size = ProgramSize(operations=len(program))
            used: set = set()
            for op in program:
                if type(op) is Collective:
                    key = (op.op, op.algorithm, op.group)
                    if key not in bounds:
                        g = sizes[op.group]
                        steps, peers = lowered_size(op.op, op.algorithm, g)
                        bounds[key] = (-(-steps // g), -(-peers // g))
                    steps, peers = bounds[key]
                    # A rank's collectives of one kind on one group use the same pairs: counted once.
                    size += ProgramSize(steps=steps, peers=0 if key in used else peers)
                    used.add(key)
            total += size.times(per_stage_ranks)
        # The ranks of a stage are tp x dp shifts of each other (simcore.symmetry), where the machine allows.
        par = self.parallel(nranks)
        share = 1.0 / (par.tp * par.dp) if par.ep == 1 else 1.0
        return dataclasses.replace(total.repeated(self.training.steps), simulated_share=share)

    # -- accounting -------------------------------------------------------------------

    def model_flops_per_step(self) -> float:
        return model_flops_per_step(self.model_spec, self.training)

    def hardware_flops_per_step(self) -> float:
        return hardware_flops_per_step(self.model_spec, self.training, self.parallelism.recompute)

    # -- dicts ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind,
                               "model": self.model if isinstance(self.model, str) else self.model.to_dict()}
        for name, (owner, default) in FLAT_FIELDS.items():
            value = getattr(getattr(self, owner), name)
            if value != default:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {"model", *FLAT_FIELDS}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise ValueError(f"workload (transformer): unknown field(s) {short_names(unknown)}; "
                             f"allowed: {', '.join(sorted(names))}")
        values = dict(data)
        # The specs check each field's type and name it.
        model = values.get("model", cls.model)
        if not isinstance(model, (str, Mapping)):
            raise ValueError(f"workload.model: expected a preset name, a file or a mapping of the shape, "
                             f"got {short(model)}")
        return cls(**values)

    # -- the report -------------------------------------------------------------------------

    def training_report(self, nranks: int, makespan_s: float, records, per_group,
                        peak_flops_per_s: Sequence[float], memory_capacity_bytes: float = math.inf,
                        compute_s_by_rank: Sequence[float] | None = None) -> dict[str, Any]:
        return training_report(self, nranks, makespan_s, records, per_group, peak_flops_per_s,
                               memory_capacity_bytes, compute_s_by_rank)
