"""Hardware presets as data files: node types (one GPU or CPU) and GPU clusters.

A node type (``presets/nodes/*.yaml``) says what one compute node is: its
peak FLOP/s per precision, the default precision, memory capacity and
bandwidth, idle and busy power, and a GEMM efficiency table (the fraction of
peak a matrix product reaches, by min(m, n, k)).  ``NodeType.node_attrs()``
are the topology node attributes that carry it (``topologies.model``), which
the simulator's roofline reads.

A cluster preset (``presets/clusters/*.yaml``) holds keyword values of the
``gpu_cluster`` builder (server size, node type, scale-up and scale-out
bandwidths and latencies, fabric); the builder's own keywords override it.

Both are plain files a user copies and edits; a path works wherever a
preset name does.  They are read with the bounded reader
(``topologies.datafile``); errors name the file and the field.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .datafile import read_data_file, shown_path
from .text import is_finite_number, short, short_names
from .model import TopologyError, check_gemm_table, check_peak_table, gemm_fraction

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
NODES_DIR = PRESETS_DIR / "nodes"
CLUSTERS_DIR = PRESETS_DIR / "clusters"

# The gpu_cluster keywords a cluster preset may set (tests check that each is one).
CLUSTER_KEYS = (
    "node_type", "gpus_per_node",
    "scale_up_bandwidth_bytes_per_s", "scale_up_latency_s", "scale_up_energy_per_byte_j",
    "scale_out_bandwidth_bytes_per_s", "scale_out_latency_s", "scale_out_energy_per_byte_j",
    "fabric", "oversubscription", "nics_per_leaf", "spines", "pod_servers", "pod_oversubscription",
    "fabric_latency_s",
    "switch_idle_power_w", "switch_busy_power_w",
)

_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _positive(value, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not is_finite_number(value) or value <= 0:
        raise TopologyError(f"{what} must be a finite number > 0, got {short(value)}")
    return float(value)


def _non_negative(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not is_finite_number(value) or value < 0:
        raise TopologyError(f"{what} must be a finite number >= 0, got {short(value)}")
    return float(value)


@dataclass(frozen=True)
class NodeType:
    """One compute node's hardware (a GPU, or a CPU server).

    ``peak_flops_per_s`` maps precision names (``bf16``, ``fp8``, ...) to
    dense peak FLOP/s; ``default_precision`` is the one plain compute runs
    at (the node's ``flops_per_s``).  ``memory_bytes`` and
    ``memory_bandwidth_bytes_per_s`` (None: unknown, i.e. unlimited),
    ``idle_power_w`` and ``busy_power_w`` (None: the builder's defaults), and
    ``gemm_efficiency``: ``((min_dim, fraction), ...)``, sizes increasing,
    fractions in (0, 1] (empty: every product reaches the peak).
    """

    name: str
    peak_flops_per_s: Mapping[str, float] = field(hash=False)
    default_precision: str
    memory_bytes: float | None = None
    memory_bandwidth_bytes_per_s: float | None = None
    idle_power_w: float | None = None
    busy_power_w: float | None = None
    gemm_efficiency: tuple[tuple[float, float], ...] = ()
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TopologyError(f"node type: name must be a non-empty string, got {short(self.name)}")
        what = f"node type {self.name}"
        set_ = object.__setattr__
        set_(self, "peak_flops_per_s", check_peak_table(self.peak_flops_per_s, f"{what}: peak_flops_per_s"))
        if not isinstance(self.default_precision, str) or self.default_precision not in self.peak_flops_per_s:
            raise TopologyError(f"{what}: default_precision must be one of {', '.join(self.peak_flops_per_s)}, "
                                f"got {short(self.default_precision)}")
        for name in ("memory_bytes", "memory_bandwidth_bytes_per_s"):
            set_(self, name, _positive(getattr(self, name), f"{what}: {name}", optional=True))
        for name in ("idle_power_w", "busy_power_w"):
            set_(self, name, _non_negative(getattr(self, name), f"{what}: {name}"))
        table = self.gemm_efficiency
        set_(self, "gemm_efficiency", check_gemm_table(table, f"{what}: gemm_efficiency") if table else ())
        if not isinstance(self.description, str):
            raise TopologyError(f"{what}: description must be a string, got {short(self.description)}")

    @property
    def flops_per_s(self) -> float:
        """The default precision's peak: the node's plain compute speed."""
        return self.peak_flops_per_s[self.default_precision]

    def efficiency(self, m: int, n: int, k: int) -> float:
        """The fraction of peak an (m, n, k) product reaches (1.0 without a table)."""
        return gemm_fraction(self.gemm_efficiency, min(m, n, k)) if self.gemm_efficiency else 1.0

    def node_attrs(self) -> dict:
        """Topology attributes of a compute node of this type (without ``role``).

        The peak table and the GEMM table are the same objects for every
        node built from one call, so a large topology stores them once.
        """
        attrs = {
            "flops_per_s": self.flops_per_s,
            "node_type": self.name,
            "default_precision": self.default_precision,
            "peak_flops_per_s": dict(self.peak_flops_per_s),
        }
        for name in ("memory_bytes", "memory_bandwidth_bytes_per_s", "idle_power_w", "busy_power_w"):
            if getattr(self, name) is not None:
                attrs[name] = getattr(self, name)
        if self.gemm_efficiency:
            attrs["gemm_efficiency"] = self.gemm_efficiency
        return attrs

    @classmethod
    def from_dict(cls, data, where: str = "node type") -> "NodeType":
        if not isinstance(data, Mapping):
            raise TopologyError(f"{where}: must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise TopologyError(f"{where}: unknown field(s) {short_names(unknown)}; known: {', '.join(names)}")
        missing = [k for k in ("name", "peak_flops_per_s", "default_precision") if k not in data]
        if missing:
            raise TopologyError(f"{where}: missing field(s) {', '.join(missing)}")
        values = dict(data)
        if isinstance(values.get("gemm_efficiency"), list):
            values["gemm_efficiency"] = tuple(
                tuple(p) if isinstance(p, list) else p for p in values["gemm_efficiency"])
        try:
            return cls(**values)
        except TopologyError as exc:
            raise TopologyError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["peak_flops_per_s"] = dict(self.peak_flops_per_s)
        out["gemm_efficiency"] = [list(p) for p in self.gemm_efficiency]
        return out


@dataclass(frozen=True)
class ClusterPreset:
    """Keyword values for ``gpu_cluster`` (``keywords``, keys from ``CLUSTER_KEYS``)."""

    name: str
    keywords: Mapping = field(hash=False)
    description: str = ""


def node_types() -> list[str]:
    """The shipped node types' names (files in ``topologies/presets/nodes``)."""
    return sorted(p.stem for p in NODES_DIR.glob("*.yaml"))


def cluster_presets() -> list[str]:
    """The shipped cluster presets' names (files in ``topologies/presets/clusters``)."""
    return sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml"))


def _preset_path(name_or_path, folder: Path, known: list[str], what: str) -> Path:
    if isinstance(name_or_path, Path):
        path = name_or_path
    elif not isinstance(name_or_path, str) or not name_or_path:
        raise TopologyError(f"{what} must be a preset name ({', '.join(known)}) or a file, got {short(name_or_path)}")
    elif _PRESET_NAME.fullmatch(name_or_path) and not name_or_path.endswith((".yaml", ".yml", ".json")):
        # A bare name is a preset, never a path: "h100" cannot read ./h100 by accident.
        if name_or_path not in known:
            raise TopologyError(f"unknown {what} {short(name_or_path)}; presets: {', '.join(known)} "
                                "(or give a .yaml/.json file)")
        return folder / f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path)
    return path


def load_node_type(name_or_path) -> NodeType:
    """A ``NodeType``: a preset's name (``node_types()``), a file, or a ``NodeType`` (returned as is)."""
    if isinstance(name_or_path, NodeType):
        return name_or_path
    path = _preset_path(name_or_path, NODES_DIR, node_types(), "node type")
    data = read_data_file(path)
    return NodeType.from_dict(data, f"node type file {shown_path(path)}")


def load_cluster_preset(name_or_path) -> ClusterPreset:
    """A cluster preset: a name (``cluster_presets()``) or a file, checked against ``CLUSTER_KEYS``."""
    if isinstance(name_or_path, ClusterPreset):
        return name_or_path
    path = _preset_path(name_or_path, CLUSTERS_DIR, cluster_presets(), "cluster preset")
    data = read_data_file(path)
    where = f"cluster preset file {shown_path(path)}"
    if not isinstance(data, Mapping):
        raise TopologyError(f"{where}: must be a mapping, got {type(data).__name__}")
    allowed = ("name", "description") + CLUSTER_KEYS
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {short_names(unknown)}; known: {', '.join(allowed)}")
    name = data.get("name", path.stem)
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise TopologyError(f"{where}: name and description must be strings")
    keywords = {k: v for k, v in data.items() if k in CLUSTER_KEYS}
    return ClusterPreset(name=name, keywords=keywords, description=description)
