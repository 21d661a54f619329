"""A scenario: topology + workload + seed + straggler and energy settings.

The same object reaches every executor unchanged.  In a file (YAML or JSON)::

    name: ring8-allreduce
    seed: 1
    topology: {builder: ring, n: 8, bandwidth_bytes_per_s: 12.5e9, latency_s: 2.0e-6}
    workload: {kind: collective, op: allreduce, nbytes: 100000000, algorithm: ring}
    stragglers: {kind: lognormal, sigma: 0.2, scope: operation}
    energy: {count_idle: true}

``groups`` (optional) names process groups of ranks for collectives and
messages to run on (``group: tp``); see ``workloads.groups``.  A workload
with a layout of its own (``transformer``) adds its groups (tp, pp, dp, ep,
edp) itself; declaring one of those names too is an error.

``topology`` may also be a path to a topology file, relative to the scenario.
``profile: PROFILE.yaml`` (from ``python -m experiments.calibrate``) simulates
the scenario on the measured machine instead; see ``topologies.profile``.

The ``Scenario``'s fields are its one source of truth: ``to_dict()`` is
derived from them (so ``dataclasses.replace`` and what a real run's workers
receive never disagree); the file it came from is kept as ``origin``, for
provenance only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topologies import Topology, TopologyError, load_topology, topology_from_dict
from topologies.io import check_plain_data, read_data_file, topology_memory_bytes
from topologies.limits import over_limit_message, resolve_max_memory_bytes
from topologies.text import format_bytes, short, short_names
from topologies.profile import MachineProfile, load_profile
from workloads import workload_from_dict
from workloads.groups import ProcessGroups, groups_from_dict
from workloads.stragglers import StragglerSpec
from workloads.validate import Programs, validated

_KEYS = ("name", "seed", "topology", "groups", "workload", "stragglers", "energy", "description", "profile")
# The one mapping whose keys may be integers: ranks of a `programs` workload.
_INT_KEYS_UNDER = ("workload.ranks",)


class ScenarioError(ValueError):
    """A malformed scenario; the message names the file and the item."""


@dataclass(frozen=True)
class EnergySpec:
    """``count_idle``: charge idle power of every node over the whole run."""

    count_idle: bool = True

    @classmethod
    def from_dict(cls, data) -> "EnergySpec":
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - {"count_idle"} or not isinstance(
            data.get("count_idle", True), bool
        ):
            raise ValueError(f"energy: expected {{count_idle: true|false}}, got {short(data)}")
        return cls(count_idle=bool(data.get("count_idle", True)))


@dataclass(frozen=True)
class Scenario:
    topology: Topology
    workload: Any
    seed: int = 0
    stragglers: StragglerSpec = field(default_factory=StragglerSpec)
    energy: EnergySpec = field(default_factory=EnergySpec)
    name: str = ""
    description: str = ""
    # A measured machine (topologies.profile): set, the topology above is that machine.
    profile: MachineProfile | None = None
    # The file the scenario was read from, for provenance ("" when built in code).
    origin: str = field(default="", compare=False)
    # Named process groups (workloads.groups); None: the world only.
    groups: ProcessGroups | None = None
    # (the estimate with every rank simulated, the memory limit) where the scenario fits the limit only
    # with its symmetric classes folded: a run that cannot fold stops before it simulates.
    memory_check: tuple[int, int] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.groups is None:
            object.__setattr__(self, "groups", ProcessGroups(self.topology.nranks))
        object.__setattr__(self, "groups", with_workload_groups(self.groups, self.workload, self.topology.nranks))

    @property
    def nranks(self) -> int:
        return self.topology.nranks

    def programs(self) -> Programs:
        """The workload lowered to per-rank programs and validated, once per scenario object: every
        caller (the load's check, the executor, the engine) gets the same ``Programs``."""
        lowered = self.__dict__.get("_programs")
        if lowered is None:
            lowered = validated(self.workload.programs(self.topology.nranks, self.topology.groups()),
                                self.topology.nranks, self.topology.groups(), self.groups)
            object.__setattr__(self, "_programs", lowered)
        return lowered

    def __getstate__(self):
        # A copy or a pickle (a sweep's point sent to a worker) lowers again where it runs.
        state = dict(self.__dict__)
        state.pop("_programs", None)
        return state

    def to_dict(self) -> dict[str, Any]:
        """The scenario as plain data, from its fields (``scenario_from_dict`` reads it back).

        The topology is in its explicit form and a profile inline, so the dict
        stands alone: it needs no file next to it.
        """
        data: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "topology": self.topology.to_dict(),
        }
        if self.groups.to_dict():
            data["groups"] = self.groups.to_dict()
        data.update({
            "workload": self.workload.to_dict(),
            "stragglers": self.stragglers.to_dict(),
            "energy": {"count_idle": self.energy.count_idle},
        })
        if self.description:
            data["description"] = self.description
        if self.profile is not None:
            data["profile"] = self.profile.to_dict()
        return data


class WorkloadGroups(ProcessGroups):
    """The scenario's declared groups with those its workload makes (``WorkloadBase.process_groups``).

    ``declared`` keeps the scenario's own, so that a scenario whose workload
    is replaced (``dataclasses.replace``) regenerates the workload's groups
    instead of clashing with the old ones; ``to_dict`` is the declaration
    alone, as the workload makes the rest again.
    """

    __slots__ = ("declared", "made_by")

    def __init__(self, declared: ProcessGroups, families, made_by: str, layout=None):
        super().__init__(declared.nranks, families, spec=declared.spec, layout=declared.layout or layout)
        self.declared = declared
        self.made_by = made_by


def with_workload_groups(groups: ProcessGroups, workload, nranks: int) -> ProcessGroups:
    """``groups`` and the groups ``workload`` makes; a name both define is an error naming it."""
    declared = groups.declared if isinstance(groups, WorkloadGroups) else groups
    hook = getattr(workload, "process_groups", None)
    made = hook(nranks) if hook is not None else None
    if not made:
        return declared
    families = {name: declared.family(name) for name in declared.names if name}
    kind = getattr(workload, "kind", type(workload).__name__)
    for name, family in made.items():
        if name in families:
            raise ValueError(f"groups.{name}: the {kind} workload makes its own group {name} from its parallel "
                             f"layout ({', '.join(made)}); remove it from the scenario's groups")
        families[name] = family
    # The layout the workload's groups come from, for the rank classes (simcore.symmetry).
    layout_of = getattr(workload, "layout", None)
    return WorkloadGroups(declared, families, kind, layout_of(nranks) if callable(layout_of) else None)


def scenario_from_dict(data: dict[str, Any], *, base_dir: Path | None = None, where: str = "scenario",
                       max_memory_bytes: int | None = None, records: bool = True) -> Scenario:
    """Build and validate a scenario; every error names ``where`` and the item.

    A scenario whose estimated memory (topology and programs, see
    ``topologies.limits``) exceeds ``max_memory_bytes`` (default 2 GiB) is refused
    before either is built.  The estimate counts the symmetric classes the
    workload's layout predicts; where only they make it fit, the run checks
    that it folds (``Scenario.memory_check``).  ``records=False``: the run
    keeps a folded run's representatives' records only (as ``experiments.plan``
    does).
    """
    # The parts are read in this order, so a file with several faults is told of the same one first.
    limit = _check_top_level(data, where, max_memory_bytes)
    topology = _read_topology(data["topology"], base_dir, where, limit)
    seed = _read_text_and_seed(data, where)
    groups = _read_groups(data.get("groups"), topology.nranks, where)
    workload, stragglers, energy = _read_run_settings(data, topology.nranks, where)
    unfolded_bytes = _check_workload_fits(workload, topology, limit, where, stragglers, records)
    profile, topology = _read_profile(data.get("profile"), topology, base_dir, where)
    try:
        # The workload's own groups (a transformer's layout) join the declared ones here.
        scenario = Scenario(
            topology=topology,
            workload=workload,
            seed=seed,
            stragglers=stragglers,
            energy=energy,
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            profile=profile,
            origin=where if base_dir is not None else "",
            groups=groups,
            memory_check=None if unfolded_bytes is None else (unfolded_bytes, limit),
        )
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    # Lower once now so that a bad workload (a peer out of range, an algorithm
    # that needs groups) is reported before anything runs.
    try:
        _check_programs(scenario)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return scenario


def _check_top_level(data, where: str, max_memory_bytes: int | None) -> int:
    """The memory limit, once ``data`` is a mapping of plain data with known keys, topology and workload among
    them."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    # The topology's own part is checked by topology_from_dict.
    check_plain_data({k: v for k, v in data.items() if k != "topology"}, where, error=ScenarioError,
                     int_keys_under=_INT_KEYS_UNDER)
    try:
        limit = resolve_max_memory_bytes(max_memory_bytes)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {short_names(unknown)}; allowed: {', '.join(_KEYS)}")
    for key in ("topology", "workload"):
        if key not in data:
            raise ScenarioError(f"{where}: missing '{key}'")
    return limit


def _read_topology(topo_data, base_dir: Path | None, where: str, limit: int) -> Topology:
    """The topology, inline or from a file (relative to ``base_dir``)."""
    try:
        if isinstance(topo_data, str):
            path = Path(topo_data)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return load_topology(path, max_memory_bytes=limit)
        return topology_from_dict(topo_data, max_memory_bytes=limit)
    except TopologyError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _read_text_and_seed(data: dict[str, Any], where: str) -> int:
    """The seed, once name and description are text."""
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ScenarioError(f"{where}: {key} must be text, got {short(data[key])}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScenarioError(f"{where}: seed must be an integer >= 0, got {short(seed)}")
    return seed


def _read_groups(groups_data, nranks: int, where: str) -> ProcessGroups:
    try:
        return groups_from_dict(groups_data, nranks)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _read_run_settings(data: dict[str, Any], nranks: int, where: str) -> tuple[Any, StragglerSpec, EnergySpec]:
    """(workload, stragglers, energy); the stragglers may name only ranks of the topology."""
    try:
        workload = workload_from_dict(data["workload"])
        stragglers = StragglerSpec.from_dict(data.get("stragglers"))
        energy = EnergySpec.from_dict(data.get("energy"))
    except (ValueError, TypeError) as exc:
        # TypeError: a value of the wrong shape that a check above missed; still one line.
        raise ScenarioError(f"{where}: {exc}") from None
    for rank in stragglers.ranks:
        if not 0 <= rank < nranks:
            raise ScenarioError(f"{where}: stragglers.ranks names rank {short(rank)}, but there are {nranks}")
    return workload, stragglers, energy


def _check_workload_fits(workload, topology: Topology, limit: int, where: str, stragglers: StragglerSpec,
                         records: bool) -> int | None:
    """The workload's layout fits the topology's GPUs, and its programs this machine's memory ``limit``
    (the estimate unfolded where it fits only folded, see ``_check_memory``)."""
    try:
        # A layout that does not fit the GPUs is refused, never silently simulated.
        workload.check_fits(topology)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    try:
        return _check_memory(topology, workload, limit, stragglers, records)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _read_profile(profile_data, topology: Topology, base_dir: Path | None,
                  where: str) -> tuple[MachineProfile | None, Topology]:
    """(the profile, the topology simulated on it); (None, ``topology``) without one."""
    if profile_data is None:
        return None, topology
    try:
        if isinstance(profile_data, dict):
            # Inline, as Scenario.to_dict writes it.
            profile = MachineProfile.from_dict(profile_data, where="profile")
        else:
            profile_path = Path(str(profile_data))
            if not profile_path.is_absolute() and base_dir is not None:
                profile_path = base_dir / profile_path
            profile = load_profile(profile_path)
        return profile, profile.simulated_topology(topology)
    except ValueError as exc:
        raise ScenarioError(f"{where}: profile: {exc}") from None


def memory_estimate_bytes(topology: Topology, workload, *, folded: bool = True,
                          records: bool = True) -> tuple[int, int]:
    """(the topology's, the programs' simulation) estimated peak bytes, from closed forms, before anything
    is built: what the memory limit is checked against.  ``folded``: with the symmetric classes the
    workload's layout predicts (else every rank simulated); ``records``: every rank's records kept."""
    size = workload.size(topology.nranks, topology.groups())
    return topology_memory_bytes(topology), size.memory_bytes(topology.nranks, folded=folded, records=records)


def _check_memory(topology: Topology, workload, limit: int, stragglers: StragglerSpec,
                  records: bool) -> int | None:
    """Refuse what the estimate puts over ``limit``; the estimate with every rank simulated where the
    run fits only folded (the run checks then that it folds), else None."""
    # A straggler model breaks every symmetry (simcore.symmetry): such a run is not folded.
    folded = not stragglers.active
    # Counted once: a transformer's size builds a step of each stage.
    size = workload.size(topology.nranks, topology.groups())
    topology_bytes = topology_memory_bytes(topology)
    program_bytes = size.memory_bytes(topology.nranks, folded=folded, records=records)
    if topology_bytes + program_bytes > limit:
        raise ValueError(over_limit_message(
            f"the topology ({format_bytes(topology_bytes)}) and the programs, {size.describe(topology.nranks)} "
            f"({format_bytes(program_bytes)}), need", topology_bytes + program_bytes, limit))
    if folded:
        unfolded = size.memory_bytes(topology.nranks, folded=False, records=records)
        if topology_bytes + unfolded > limit:
            return topology_bytes + unfolded
    return None


def _check_programs(scenario: Scenario) -> None:
    scenario.programs()  # lowered and validated once, here, and kept for the run


def with_profile(scenario: Scenario, profile: MachineProfile) -> Scenario:
    """``scenario`` simulated on the machine ``profile`` measured (see topologies.profile).

    The simulated executor's ``native_collectives=False`` leaves out the
    profile's corrections for the library's own collectives, for comparison
    with a real run in algorithm mode.  An emulated profile keeps the
    scenario's own topology, as its emulated network builds it
    (``MachineProfile.emulated_topology``).
    """
    return dataclasses.replace(scenario, topology=profile.simulated_topology(scenario.topology), profile=profile)


def read_scenario_file(path: str | Path) -> dict[str, Any]:
    """The scenario file's plain data (YAML or JSON; ``1e9`` reads as a float)."""
    data = read_data_file(path, ScenarioError, int_keys_under=_INT_KEYS_UNDER)
    if data is None:
        raise ScenarioError(f"{path}: empty scenario file")
    return data


def load_scenario(path: str | Path, *, max_memory_bytes: int | None = None) -> Scenario:
    path = Path(path)
    data = read_scenario_file(path)
    scenario = scenario_from_dict(data, base_dir=path.parent, where=str(path), max_memory_bytes=max_memory_bytes)
    if not scenario.name:
        scenario = dataclasses.replace(scenario, name=path.stem)
    return scenario
