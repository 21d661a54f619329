"""What a transformer training job is: the model's shape, the training setup and the parallel layout.

Plain, validated, frozen dataclasses shared by the FLOP accounting
(``flops``), the memory model (``memory``), the lowering to per-rank programs
(``lowering``), the workload that holds them (``workload``) and
``experiments.plan``.  Symbols in comments follow Narayanan et al.
(2021) and Korthikanti et al. (2022): ``s`` sequence length, ``b`` micro-batch
size, ``h`` hidden size, ``a`` attention heads, ``L`` layers, ``V``
vocabulary, ``t`` tensor-parallel size, ``p`` pipeline stages, ``d``
data-parallel size, ``m`` micro-batches per step.

Model presets are data files (``workloads/models/*.yaml``): copy one and edit
it, or write the shape inline in a scenario.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from topologies.io import read_data_file
from topologies.text import MAX_INT, short, short_names

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
PRECISION_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
# Megatron-LM's vocabulary-parallel cross entropy works on fp32 logits, whatever the training precision.
LOGIT_BYTES = 4
SCHEDULES = ("gpipe", "1f1b", "interleaved")
RECOMPUTE = ("none", "selective", "full")
OPTIMIZERS = ("adam",)


def _int(value, where: str, minimum: int = 1) -> int:
    number = int(value) if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT else value
    if isinstance(number, bool) or not isinstance(number, int) or not minimum <= number <= MAX_INT:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {short(value)}")
    return number


def _from_mapping(cls, data, where: str, ints: tuple[str, ...]):
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {short(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {short_names(unknown)}; allowed: {', '.join(sorted(names))}")
    values = dict(data)
    for name in ints:
        if name in values:
            values[name] = _int(values[name], f"{where}.{name}", 0)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (GPT, Llama, Mixtral shapes).

    ``kv_heads`` < ``heads`` is grouped-query attention (0: as many as
    ``heads``); ``ffn_hidden`` 0 means 4 h; ``gated_mlp`` is a SwiGLU MLP
    (three h x ffn matrices instead of two); ``experts`` > 1 makes every
    layer's MLP a mixture of experts with ``top_k`` routing and
    ``capacity_factor``.  The input embedding and the output layer are
    separate V x h matrices (untied, as Megatron-LM keeps them with pipelining).
    """

    name: str = ""
    layers: int = 1
    hidden: int = 1024
    heads: int = 16
    kv_heads: int = 0
    ffn_hidden: int = 0
    seq_len: int = 2048
    vocab: int = 50257
    gated_mlp: bool = False
    experts: int = 0
    top_k: int = 1
    capacity_factor: float = 1.0

    _INTS = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "seq_len", "vocab", "experts", "top_k")

    def __post_init__(self):
        for name in ("layers", "hidden", "heads", "seq_len", "vocab", "top_k"):
            _int(getattr(self, name), f"model.{name}")
        for name in ("kv_heads", "ffn_hidden", "experts"):
            _int(getattr(self, name), f"model.{name}", 0)
        if not isinstance(self.name, str):
            raise ValueError(f"model.name must be text, got {short(self.name)}")
        if not isinstance(self.gated_mlp, bool):
            raise ValueError(f"model.gated_mlp must be true or false, got {short(self.gated_mlp)}")
        if self.hidden % self.heads:
            raise ValueError(f"model: hidden {self.hidden} must be a multiple of heads {self.heads}")
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"model: heads {self.heads} must be a multiple of kv_heads {self.kv_heads}")
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", 4 * self.hidden)
        if self.experts == 1:
            object.__setattr__(self, "experts", 0)
        if self.experts and self.top_k > self.experts:
            raise ValueError(f"model: top_k {self.top_k} exceeds experts {self.experts}")
        cf = self.capacity_factor
        if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not cf > 0 or cf != cf or cf == float("inf"):
            raise ValueError(f"model.capacity_factor must be a finite number > 0, got {short(cf)}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def moe(self) -> bool:
        return self.experts > 1

    @classmethod
    def from_dict(cls, data, where: str = "model") -> "ModelSpec":
        return _from_mapping(cls, data, where, cls._INTS)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def model_presets() -> list[str]:
    """The shipped model presets' names (files in ``workloads/models``)."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_model(name_or_spec, where: str = "model") -> ModelSpec:
    """A preset's name, a path to a model file, or a mapping of the shape."""
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    if isinstance(name_or_spec, Mapping):
        return ModelSpec.from_dict(name_or_spec, where)
    if not isinstance(name_or_spec, str) or not name_or_spec:
        raise ValueError(f"{where}: expected a preset name ({', '.join(model_presets())}), a file or a mapping, "
                         f"got {short(name_or_spec)}")
    path = MODELS_DIR / f"{name_or_spec}.yaml"
    if not path.exists():
        path = Path(name_or_spec)
        if not path.exists():
            raise ValueError(f"{where}: unknown model {short(name_or_spec)}; presets: {', '.join(model_presets())}")
    data = read_data_file(path, ValueError)
    return ModelSpec.from_dict(data, f"{where} ({path.name})")


@dataclass(frozen=True)
class ParallelSpec:
    """How the model is split over ``tp * pp * dp`` ranks.

    ``tp`` tensor-parallel size, with ``sequence_parallel`` (Korthikanti et
    al.): layer norms and dropout split along the sequence, the TP
    all-reduces become all-gather + reduce-scatter.  ``pp`` pipeline stages
    run ``schedule`` (``interleaved`` gives each rank ``virtual_stages``
    chunks of layers).  ``dp`` data-parallel replicas (0: the rest of the
    ranks) with ZeRO stage ``zero`` (0 DDP; 1 optimizer states sharded; 2
    and gradients; 3 and parameters, gathered before each layer as FSDP
    does).  ``ep`` expert-parallel size, dividing ``dp``.  ``recompute``
    activations: ``none``, ``selective`` (attention's softmax and dropout,
    Korthikanti et al.) or ``full`` (each layer's input only).
    ``bucket_bytes``: the gradient bucket of the data-parallel reduction.
    ``stage_layers``: the layers of each virtual stage in pipeline order
    (chunk c of stage s is entry c x pp + s); empty: ``stage_layers()``'s
    split.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 0
    ep: int = 1
    sequence_parallel: bool = False
    schedule: str = "1f1b"
    virtual_stages: int = 1
    zero: int = 0
    recompute: str = "none"
    bucket_bytes: int = 25 * 2**20
    stage_layers: tuple = ()

    _INTS = ("tp", "pp", "dp", "ep", "virtual_stages", "zero", "bucket_bytes")

    def __post_init__(self):
        for name in ("tp", "pp", "ep", "virtual_stages", "bucket_bytes"):
            _int(getattr(self, name), f"workload.{name}")
        _int(self.dp, "workload.dp", 0)
        if self.zero not in (0, 1, 2, 3) or isinstance(self.zero, bool):
            raise ValueError(f"workload.zero must be 0, 1, 2 or 3, got {short(self.zero)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"workload.schedule must be one of {', '.join(SCHEDULES)}, got {short(self.schedule)}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"workload.recompute must be one of {', '.join(RECOMPUTE)}, got {short(self.recompute)}")
        if not isinstance(self.sequence_parallel, bool):
            raise ValueError(f"workload.sequence_parallel must be true or false, got {short(self.sequence_parallel)}")
        if self.schedule != "interleaved" and self.virtual_stages != 1:
            raise ValueError(f"workload.virtual_stages {self.virtual_stages} needs schedule: interleaved")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("workload.sequence_parallel needs tp > 1")
        given = self.stage_layers
        if not isinstance(given, (list, tuple)):
            raise ValueError(f"workload.stage_layers must be a list of layer counts, got {short(given)}")
        object.__setattr__(self, "stage_layers", tuple(_int(n, f"workload.stage_layers[{i}]")
                                                       for i, n in enumerate(given)))
        if given and len(given) != self.pp * self.virtual_stages:
            raise ValueError(f"workload.stage_layers has {len(given)} entries, but pp {self.pp} x virtual_stages "
                             f"{self.virtual_stages} = {self.pp * self.virtual_stages} virtual stages")

    def resolve(self, nranks: int) -> "ParallelSpec":
        """This layout with ``dp`` worked out for ``nranks``; ValueError naming the sizes if it does not fit."""
        model = self.tp * self.pp
        if nranks % model:
            raise ValueError(f"workload: tp {self.tp} x pp {self.pp} = {model} does not divide the topology's "
                             f"{nranks} ranks")
        dp = self.dp or nranks // model
        if model * dp != nranks:
            raise ValueError(f"workload: tp {self.tp} x pp {self.pp} x dp {self.dp} = {model * self.dp} ranks, "
                             f"but the topology has {nranks}")
        if dp % self.ep:
            raise ValueError(f"workload: ep {self.ep} must divide dp {dp}")
        return dataclasses.replace(self, dp=dp)


def stage_layers(layers: int, parallel: "ParallelSpec") -> tuple[int, ...]:
    """The layers of each virtual stage, in pipeline order (chunk c of stage s is entry c x pp + s): the
    layout's ``stage_layers`` (checked to sum to ``layers``), else equal where pp x virtual_stages divides
    ``layers``, else as even as can be with the stages at the ends one layer short first (first, last,
    second, second to last, ...): they also hold the input embedding and the output layer, as Llama 3
    405B's 126 layers were spread over 16 stages (7, 8 x 14, 7).  The one place the split is decided."""
    chunks = parallel.pp * parallel.virtual_stages
    given = parallel.stage_layers
    if given:
        if sum(given) != layers:
            raise ValueError(f"workload.stage_layers sum to {sum(given)} layers, but the model has {layers}")
        return given
    if chunks > layers:
        raise ValueError(f"workload: pp {parallel.pp} x virtual_stages {parallel.virtual_stages} = {chunks} "
                         f"virtual stages, more than the model's {layers} layers")
    base = -(-layers // chunks)
    counts = [base] * chunks
    ends = [k for pair in zip(range(chunks), range(chunks - 1, -1, -1)) for k in pair]
    for k in list(dict.fromkeys(ends))[:base * chunks - layers]:
        counts[k] -= 1
    return tuple(counts)


@dataclass(frozen=True)
class TrainingSpec:
    """One optimizer step of ``global_batch`` sequences, ``micro_batch`` at a
    time per data-parallel replica (so m = global_batch / (micro_batch * dp)
    micro-batches per step), in mixed ``precision`` with Adam (fp32 master
    weights, momentum and variance: K = 12 bytes per parameter)."""

    global_batch: int = 8
    micro_batch: int = 1
    precision: str = "bf16"
    optimizer: str = "adam"
    steps: int = 1

    _INTS = ("global_batch", "micro_batch", "steps")

    def __post_init__(self):
        for name in self._INTS:
            _int(getattr(self, name), f"workload.{name}")
        if self.precision not in PRECISION_BYTES:
            raise ValueError(f"workload.precision must be one of {', '.join(PRECISION_BYTES)}, "
                             f"got {short(self.precision)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"workload.optimizer must be one of {', '.join(OPTIMIZERS)}, got {short(self.optimizer)}")

    @property
    def bytes_per_value(self) -> int:
        return PRECISION_BYTES[self.precision]

    def microbatches(self, dp: int) -> int:
        """m for ``dp`` replicas; ValueError if the global batch does not divide."""
        per_replica = self.micro_batch * dp
        if self.global_batch % per_replica:
            raise ValueError(f"workload: global_batch {self.global_batch} is not a multiple of micro_batch "
                             f"{self.micro_batch} x dp {dp} = {per_replica}")
        return self.global_batch // per_replica


# ---------------------------------------------------------------------------
# Parameter counts (Narayanan et al. 2021, sec. 5.1: P = 12 L h^2 (1 + 13/(12h) + (V + s)/(12 L h)) for GPT)


@dataclass(frozen=True)
class LayerParameters:
    """Parameters of one transformer layer, by part.

    ``attention``: Q and O (h x h each, with biases h), K and V (h x kv each,
    kv = kv_heads x head_dim, with biases kv); ``norms``: two layer norms
    (scale and bias, 2h each); ``mlp``: one MLP (dense) or one expert
    (h x f twice, or three times when gated, with biases f and h when not
    gated); ``router``: h x experts (MoE only); ``experts``: how many MLPs.
    """

    attention: int
    norms: int
    mlp: int
    router: int
    experts: int

    @property
    def total(self) -> int:
        return self.attention + self.norms + self.mlp * self.experts + self.router

    @property
    def dense(self) -> int:
        """The parameters every rank of a tensor-parallel group splits (all but the experts)."""
        return self.attention + self.norms + self.router


def layer_parameters(model: ModelSpec) -> LayerParameters:
    h, f = model.hidden, model.ffn_hidden
    kv = model.kv_heads * model.head_dim
    attention = 2 * h * h + 2 * h * kv + 2 * h + 2 * kv
    norms = 4 * h
    mlp = 3 * h * f if model.gated_mlp else 2 * h * f + f + h
    experts = model.experts if model.moe else 1
    router = h * model.experts if model.moe else 0
    return LayerParameters(attention, norms, mlp, router, experts)


def embedding_parameters(model: ModelSpec) -> int:
    """The input embedding (V x h), on the first pipeline stage; the output
    layer, on the last, is as large again (untied), plus the final norm (2h)."""
    return model.vocab * model.hidden


def total_parameters(model: ModelSpec) -> int:
    """Every parameter: L layers, the embedding, the output layer and the final norm."""
    return model.layers * layer_parameters(model).total + 2 * embedding_parameters(model) + 2 * model.hidden


def active_parameters(model: ModelSpec) -> int:
    """Parameters one token passes through (a MoE token visits top_k experts, not all)."""
    layer = layer_parameters(model)
    per_layer = layer.dense + layer.mlp * (min(model.top_k, layer.experts) if model.moe else 1)
    return model.layers * per_layer + 2 * embedding_parameters(model) + 2 * model.hidden


BLOCKS = ("layer", "embed", "head")


def block_parameters(model: ModelSpec, tp: int, ep: int, block: str) -> tuple[int, int]:
    """(dense, expert) parameters one rank holds of a ``block`` of its stage.

    ``layer``: one transformer layer, every matrix split over the t ranks of
    its tensor-parallel group, and so, by choice, the norms, row-parallel
    biases and router that Megatron-LM replicates (6h + h x experts of a
    layer's 12h^2 or more: t/(2h) of a rank's share, 0.03% for GPT-3 at
    t = 8), which keeps t x (the ranks' shares) = the model; experts: E/ep
    of them per rank, each split over t.  ``embed``: the input embedding,
    V/t rows (vocab-parallel; V padded up to a multiple of t, as Megatron-LM
    pads it).  ``head``: the output layer (V/t rows) and the final norm.
    The memory model and the lowering's gradient buckets both count these.
    """
    t, h = tp, model.hidden
    vocab_rows = -(-model.vocab // t)
    if block == "layer":
        per_layer = layer_parameters(model)
        if model.moe:
            return -(-per_layer.dense // t), -(-(model.experts // ep) * per_layer.mlp // t)
        return -(-per_layer.total // t), 0
    if block == "embed":
        return vocab_rows * h, 0
    if block == "head":
        return vocab_rows * h + -(-2 * h // t), 0
    raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {short(block)}")
