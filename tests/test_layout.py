"""The house's layout: imports point down, one registry, one semantics table, one statistic, one source of truth."""
import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from executors import backends, executor_class, get_executor
from executors.real.runner import rank_times
from experiments.output import json_text, write_json, write_result
from simcore.result import Record, RunResult, op_times, records_frame
from topologies.profile import LinkClass, MachineProfile
from workloads.collectives import ALGORITHMS, COLLECTIVES, DEFAULT_ALGORITHM, SEMANTICS, root_peer
from workloads.ops import Collective, Compute
from workloads.scenario import load_scenario, scenario_from_dict, with_profile

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["topologies", "workloads", "simcore", "executors", "experiments"]
OPTIONAL = {"mpi4py", "torch", "dask", "distributed"}


def _imports(path: Path):
    """(imported top-level package, line, inside a function) for each import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            yield name.split(".")[0], node.lineno, id(node) in inside


def test_every_import_points_down_the_layers_and_none_hides_in_a_function():
    problems = []
    for level, package in enumerate(LAYERS):
        for path in sorted((ROOT / package).rglob("*.py")):
            for top, line, in_function in _imports(path):
                where = f"{path.relative_to(ROOT)}:{line}: {top}"
                if top in LAYERS and LAYERS.index(top) > level:
                    problems.append(f"runs up the layers: {where}")
                if top in LAYERS and top != package and in_function:
                    problems.append(f"inside a function: {where}")
                if top == "mpi4py" and package == "experiments":
                    problems.append(f"mpi4py in experiments/: {where}")
    assert problems == []


# Documented public names that start with an underscore: os._exit, and namedtuple's methods.
PUBLIC_UNDERSCORED = {"_exit", "_fields", "_replace", "_asdict", "_make", "_field_defaults"}
# The one module that may reach past SimPy's public API (an absolute-time event, the event counter).
SIMPY_INTERNALS = Path("simcore/clock.py")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path):
    """(line, what) for each private name ``path`` reaches in another module: ``from m import _x``,
    or ``obj._x`` on an object other than ``self``/``cls`` where this module defines no ``_x``
    (a class's own private state, used by its other instances, is defined where it is used)."""
    tree = ast.parse(path.read_text(), str(path))
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _private(node.value):
            defined.add(node.value)  # __slots__ entries
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if _private(alias.name):
                    yield node.lineno, f"imports {node.module}.{alias.name}"
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in PUBLIC_UNDERSCORED:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr not in defined:
                yield node.lineno, f"uses .{node.attr} of another module's object"


def test_no_module_reaches_into_another_modules_private_names():
    problems = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT) == SIMPY_INTERNALS:
                continue
            problems += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in _private_uses(path)]
    assert problems == []


def test_the_private_name_check_finds_what_it_is_for(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("from simcore.network import _hidden\n"
                      "class A:\n    def f(self, other, env):\n        self._mine = other._mine\n"
                      "        return env._queue, self._x\n")
    assert [what for _, what in _private_uses(source)] == [
        "imports simcore.network._hidden", "uses ._queue of another module's object"]


# workloads/ in three floors: the operation vocabulary and programs; the workload families, each
# lowering to programs; the scenario that assembles a topology, groups and a workload.
WORKLOAD_VOCABULARY = {"ops", "groups", "collectives", "validate", "stragglers"}
WORKLOAD_FAMILIES = {"base", "training", "parameter_server", "federated", "pipeline", "offload", "transformer"}
WORKLOAD_ASSEMBLY = {"scenario", "__init__"}


def _workload_module(name: str) -> str:
    """'workloads.transformer.spec' -> 'transformer'; 'workloads' -> '__init__'."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_workloads_floors_import_only_downwards():
    floors = [WORKLOAD_VOCABULARY, WORKLOAD_FAMILIES, WORKLOAD_ASSEMBLY]
    floor_of = {module: i for i, floor in enumerate(floors) for module in floor}
    problems = []
    for path in sorted((ROOT / "workloads").rglob("*.py")):
        rel = path.relative_to(ROOT / "workloads")
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        assert own in floor_of, f"workloads/{rel} is on no floor: add it to one above"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "workloads":
                names = [node.module + "." + a.name for a in node.names] if node.module == "workloads" \
                    else [node.module]
                for name in names:
                    other = _workload_module(name)
                    if other == own or other not in floor_of:
                        continue
                    up = floor_of[other] > floor_of[own]
                    # A family builds on the vocabulary and on base, never on another family.
                    sideways = floor_of[own] == 1 == floor_of[other] and "base" not in (own, other)
                    if up or sideways:
                        problems.append(f"workloads/{rel}:{node.lineno}: {own} imports {other}")
    assert problems == []


def test_experiments_name_no_launcher_variable():
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        text = path.read_text()
        for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD", "PMIX_RANK", "SLURM_PROCID", "SLURM_STEP",
                    "TORCHELASTIC", '"RANK"', "LOCAL_RANK", "WORLD_SIZE"):
            assert var not in text, f"{path.relative_to(ROOT)} reads {var}"


# -- the registry -------------------------------------------------------------------


def test_the_registry_knows_each_backend_and_which_are_real():
    assert backends() == ["mpi", "sim", "torch"]
    assert backends(real=True) == ["mpi", "torch"]
    assert backends(real=False) == ["sim"]
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; available: mpi, sim, torch"):
        executor_class("gpu")


def test_each_real_backend_supplies_its_launch_command():
    torch_cmd = executor_class("torch").launch_command(3, ["executors.real.worker", "/tmp/run"])
    assert "--nproc-per-node=3" in torch_cmd and torch_cmd[-3:] == ["-m", "executors.real.worker", "/tmp/run"]
    pytest.importorskip("mpi4py")
    mpi_cmd = executor_class("mpi").launch_command(4, ["executors.real.worker", "/tmp/run"], hostfile="hosts")
    assert mpi_cmd[1:3] == ["-n", "4"] and mpi_cmd[-3:] == ["-m", "executors.real.worker", "/tmp/run"]
    assert mpi_cmd[mpi_cmd.index("-f") + 1] == "hosts"


def test_outside_a_job_a_real_executor_is_rank_0_of_nothing_and_shares_its_own_value():
    pytest.importorskip("mpi4py")
    executor = get_executor("mpi")
    assert not executor.inside_job()
    assert (executor.job_rank(), executor.job_size(), executor.share({"go": True})) == (0, None, {"go": True})


def test_a_hostfile_is_refused_by_a_backend_whose_launcher_reads_none():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="backend 'torch' takes no hostfile; torchrun meets its nodes"):
        get_executor("torch", hostfile="hosts")


# -- collective semantics ----------------------------------------------------------------


def test_the_semantics_table_is_the_vocabulary():
    assert COLLECTIVES == tuple(SEMANTICS)
    assert all(DEFAULT_ALGORITHM[op] == ALGORITHMS[op][0] for op in COLLECTIVES)
    assert ALGORITHMS["alltoall"] == ("pairwise", "ring") and SEMANTICS["alltoall"].aliases == {"ring": "pairwise"}
    assert COLLECTIVES == ("allreduce", "broadcast", "reduce", "allgather", "reduce_scatter", "alltoall",
                           "alltoallv", "scatter", "gather", "barrier")
    assert [op for op, s in SEMANTICS.items() if s.rooted] == ["broadcast", "reduce", "scatter", "gather"]
    assert [op for op, s in SEMANTICS.items() if s.reduces] == ["allreduce", "reduce", "reduce_scatter"]
    assert [op for op, s in SEMANTICS.items() if s.writes_output] == ["reduce_scatter", "alltoall", "alltoallv"]
    assert ALGORITHMS["alltoallv"] == ("pairwise", "ring") and SEMANTICS["alltoallv"].aliases == {"ring": "pairwise"}
    assert ALGORITHMS["scatter"] == ALGORITHMS["gather"] == ("binomial", "linear")
    assert root_peer(Collective("broadcast", 8, root=2)) == 2
    assert root_peer(Collective("scatter", 8, root=3)) == 3 and root_peer(Collective("gather", 8, root=1)) == 1
    assert root_peer(Collective("alltoallv", send_nbytes=(1, 2), recv_nbytes=(1, 3))) == -1
    assert SEMANTICS["scatter"].busbw_factor(4) == SEMANTICS["gather"].busbw_factor(4) == pytest.approx(0.75)
    assert root_peer(Collective("allreduce", 8, root=2)) == -1
    assert SEMANTICS["allreduce"].busbw_factor(4) == pytest.approx(1.5)


def test_expected_results_follow_the_fill_of_rank_plus_one():
    # 3 ranks filled with 1, 2, 3: the sum is 6; a 10-byte vector cuts into blocks of 4, 3, 3.
    assert [tuple(e[:4]) for e in SEMANTICS["allgather"].expected(Collective("allgather", 10, root=0), 1, 3)] == [
        ("buffer", 0, 4, 1), ("buffer", 4, 3, 2), ("buffer", 7, 3, 3)]
    assert [tuple(e[:4]) for e in SEMANTICS["reduce_scatter"].expected(Collective("reduce_scatter", 10, root=0), 2, 3)] == [("buffer", 7, 3, 6)]
    assert SEMANTICS["reduce"].expected(Collective("reduce", 10, root=0), 1, 3) == []
    assert [tuple(e[:4]) for e in SEMANTICS["broadcast"].expected(Collective("broadcast", 10, root=2), 1, 3)] == [("buffer", 0, 10, 3)]
    # Rank 1's alltoall output: block 1 of every rank's input (3 bytes each).
    assert [tuple(e[:4]) for e in SEMANTICS["alltoall"].expected(Collective("alltoall", 10, root=0), 1, 3)] == [
        ("output", 0, 3, 1), ("output", 3, 3, 2), ("output", 6, 3, 3)]
    assert SEMANTICS["allreduce"].expected(Collective("allreduce", 300, root=0), 0, 300)[0].value == sum(range(1, 301)) % 256
    # Scatter of 10 bytes from root 1 of 3: rank r's block has block_layout's size r (4, 3, 3)
    # but they lie root first (rank 1: 3 B at 0, rank 2: 3 B at 3, rank 0: 4 B at 6), each
    # holding the root's fill, 2.
    assert [tuple(e[:4]) for e in SEMANTICS["scatter"].expected(Collective("scatter", 10, root=1), 0, 3)] == [
        ("buffer", 6, 4, 2)]
    assert [tuple(e[:4]) for e in SEMANTICS["scatter"].expected(Collective("scatter", 10, root=1), 2, 3)] == [
        ("buffer", 3, 3, 2)]
    # Gather to root 1: only the root's buffer is defined, block j from rank j.
    assert SEMANTICS["gather"].expected(Collective("gather", 10, root=1), 0, 3) == []
    assert [tuple(e[:4]) for e in SEMANTICS["gather"].expected(Collective("gather", 10, root=1), 1, 3)] == [
        ("buffer", 6, 4, 1), ("buffer", 0, 3, 2), ("buffer", 3, 3, 3)]
    # Alltoallv: the output holds recv_nbytes[j] bytes from rank j, back to back.
    op = Collective("alltoallv", send_nbytes=(1, 1, 1), recv_nbytes=(2, 0, 5))
    assert [tuple(e[:4]) for e in SEMANTICS["alltoallv"].expected(op, 1, 3)] == [
        ("output", 0, 2, 1), ("output", 2, 0, 2), ("output", 2, 5, 3)]


# -- records and the one statistic -----------------------------------------------------


def _records(rows):
    return records_frame((Record(row[0], row[1], "", *row[2:10]) for row in rows), repeats=[row[10] for row in rows])


def test_op_times_is_the_slowest_rank_then_the_median_over_repeats():
    rows = []
    durations = {0: (1.0, 3.0), 1: (2.0, 1.0), 2: (5.0, 4.0)}  # repeat -> (rank 0, rank 1)
    for repeat, (d0, d1) in durations.items():
        rows.append((0, 0, "allreduce", "ring", -1, 8, 0.0, 10.0, 10.0 + d0, math.nan, repeat))
        rows.append((1, 0, "allreduce", "ring", -1, 8, 0.0, 10.0, 10.0 + d1, math.nan, repeat))
    table = op_times(_records(rows))
    # Slowest rank per repeat: 3, 2, 5; the median is 3.
    assert table.to_dict("records") == [{"op_index": 0, "group": "", "kind": "allreduce", "algorithm": "ring", "nbytes": 8,
                                         "flops": 0.0, "time_s": 3.0, "min_s": 2.0, "max_s": 5.0, "repeats": 3}]
    assert RunResult(records=_records(rows), summary={}).op_time_s() == {0: 3.0}


def test_a_real_result_has_the_simulators_per_rank_table():
    # Two ranks, one repeat: rank 0 computes 1 s then all-reduces for 2 s; rank 1
    # starts a non-blocking all-reduce (on its stream, 0-4 s) and waits for it.
    rows = [(0, 0, "compute", "", -1, 0, 1e9, 0.0, 1.0, math.nan, 0),
            (0, 1, "allreduce", "ring", -1, 8, 0.0, 1.0, 3.0, math.nan, 0),
            (1, 0, "allreduce", "ring", -1, 8, 0.0, 0.0, 4.0, math.nan, 0),
            (1, 1, "wait", "", -1, 0, 0.0, 0.0, 4.0, math.nan, 0)]
    programs = [[Compute(1e9), Collective("allreduce", 8)],
                [Collective("allreduce", 8, blocking=False, handle="h"), Collective("barrier", 0)]]
    table = rank_times(_records(rows), programs, ["a", "b"])
    assert table[["rank", "node", "compute_s", "comm_s", "wait_s", "end_s"]].to_dict("records") == [
        {"rank": 0, "node": "a", "compute_s": 1.0, "comm_s": 2.0, "wait_s": 1.0, "end_s": 3.0},
        {"rank": 1, "node": "b", "compute_s": 0.0, "comm_s": 0.0, "wait_s": 4.0, "end_s": 4.0}]
    assert table["energy_j"].isna().all()


# -- one source of truth -------------------------------------------------------------------


def test_a_replaced_field_is_what_the_scenario_says_it_is(tmp_path):
    scenario = load_scenario(ROOT / "experiments" / "scenarios" / "ring8_allreduce.yaml")
    changed = dataclasses.replace(scenario, seed=scenario.seed + 7, name="other")
    data = changed.to_dict()
    assert (data["seed"], data["name"]) == (scenario.seed + 7, "other")
    again = scenario_from_dict(data)
    assert again.to_dict() == data and again.programs() == changed.programs()
    assert scenario.origin.endswith("ring8_allreduce.yaml")


def test_a_scenario_on_a_profile_stands_alone_as_data():
    machine = MachineProfile(name="m", backend="mpi", flops_per_s=1e10,
                             link_classes={"intra_node": LinkClass(1e-6, 5e9)}, reduce_s_per_byte=1e-10)
    scenario = with_profile(scenario_from_dict({"topology": {"builder": "ring", "n": 4},
                                                "workload": {"kind": "collective", "op": "allreduce",
                                                             "nbytes": 64}}), machine)
    again = scenario_from_dict(json.loads(json.dumps(scenario.to_dict())))
    assert again.profile == machine and again.to_dict() == scenario.to_dict()


# -- files ---------------------------------------------------------------------------------


def test_json_written_is_standard_even_with_nan_and_infinity(tmp_path):
    path = write_json({"a": math.nan, "b": [math.inf, 1.5], "c": np.float64(2.0), "d": np.int64(3)}, tmp_path / "s.json")
    assert json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard {name}")) == {
        "a": None, "b": [None, 1.5], "c": 2.0, "d": 3}
    assert "NaN" not in json_text({"x": float("nan")})


def test_write_result_writes_every_table_and_the_trace(tmp_path):
    rows = [(0, 0, "compute", "", -1, 0, 1e9, 0.0, 1.0, 2.0, 0)]
    result = RunResult(records=_records(rows).drop(columns="repeat"), summary={"makespan_s": 1.0, "energy": math.nan},
                       per_rank=pd.DataFrame({"rank": [0], "compute_s": [1.0]}))
    names = [p.name for p in write_result(result, tmp_path / "out")]
    assert names == ["records.csv", "per_rank.csv", "summary.json", "trace.json"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"makespan_s": 1.0, "energy": None}


@pytest.mark.mpi
def test_whatif_over_mpi_reports_the_real_per_rank_shares_one_run_at_a_time(tmp_path, capsys):
    from experiments import whatif

    if not executor_class("mpi").is_available():
        pytest.skip(executor_class("mpi").unavailable_reason())
    code = whatif.main([str(ROOT / "experiments" / "scenarios" / "pingpong_programs.yaml"), "--vary", "seed=1,2",
                        "--backend", "mpi", "--jobs", "2", "--no-plots", "--out", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "whatif.csv")
    assert len(table) == 2 and table["makespan_s"].gt(0).all()
    # The shares come from the measured per-rank table, not zeros or NaN.
    assert table["comm_share"].between(0.0, 1.0).all() and table["comm_share"].gt(0).all()
    # Two real runs side by side would disturb each other: a real backend runs one at a time.
    assert "[1/2 " in capsys.readouterr().err


def _runtime_module_imports():
    """{module: project modules it imports at run time} (``if TYPE_CHECKING:`` blocks left out)."""
    paths = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
             for package in LAYERS for path in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from package import module" imports that module (after the package).
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in paths else node.module)
        graph[module] = {t for t in targets if t.split(".")[0] in LAYERS and t != module}
    return graph


def test_no_module_imports_itself_through_a_cycle():
    graph = _runtime_module_imports()
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " -> ".join(path + [module])
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            # A package's __init__ re-exports its modules: importing it is importing them.
            visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
