"""experiments.validate (predicted against measured) and experiments.sbatch (Slurm scripts)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from experiments import sbatch, validate
from simcore.result import RECORD_COLUMNS

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"


def records(rows, repeat=None) -> pd.DataFrame:
    """Records from (rank, op_index, kind, algorithm, nbytes, flops, start_s, end_s) tuples."""
    full = [(r, i, "", k, a, -1, n, f, s, e, math.nan) for r, i, k, a, n, f, s, e in rows]
    frame = pd.DataFrame(full, columns=list(RECORD_COLUMNS))
    if repeat is not None:
        frame["repeat"] = repeat
    return frame


# Two ranks: a compute of 1e9 flops, then two all-reduces of 1 MB, then a 1 kB all-gather.
SIM = records([
    (0, 0, "compute", "", 0, 1e9, 0.0, 1.0), (1, 0, "compute", "", 0, 1e9, 0.0, 1.0),
    (0, 1, "allreduce", "ring", 1_000_000, 0.0, 1.0, 1.5), (1, 1, "allreduce", "ring", 1_000_000, 0.0, 1.0, 1.4),
    (0, 2, "allreduce", "ring", 1_000_000, 0.0, 1.5, 2.0), (1, 2, "allreduce", "ring", 1_000_000, 0.0, 1.5, 2.0),
    (0, 3, "allgather", "ring", 1000, 0.0, 2.0, 2.001), (1, 3, "allgather", "ring", 1000, 0.0, 2.0, 2.001),
])


def real_repeat(repeat, compute_s, allreduce_s, allgather_s):
    """One repeat of the same program; rank 1 is 0.1 s faster in the first all-reduce."""
    t = 0.0
    rows = []
    for rank in (0, 1):
        rows.append((rank, 0, "compute", "", 0, 1e9, 0.0, compute_s))
    t = compute_s
    a1, a2 = allreduce_s
    rows += [(0, 1, "allreduce", "ring", 1_000_000, 0.0, t, t + a1), (1, 1, "allreduce", "ring", 1_000_000, 0.0, t, t + a1 - 0.1)]
    t += a1
    rows += [(0, 2, "allreduce", "ring", 1_000_000, 0.0, t, t + a2), (1, 2, "allreduce", "ring", 1_000_000, 0.0, t, t + a2)]
    t += a2
    rows += [(r, 3, "allgather", "ring", 1000, 0.0, t, t + allgather_s) for r in (0, 1)]
    return records(rows, repeat=repeat)


REAL = pd.concat([
    real_repeat(0, 2.0, (1.0, 0.6), 0.002),
    real_repeat(1, 4.0, (1.0, 1.0), 0.004),
    real_repeat(2, 3.0, (0.8, 1.2), 0.001),
], ignore_index=True)


def row(table, kind):
    return table[table["kind"] == kind].iloc[0]


def test_table_statistics_are_exact():
    table = validate.validation_table(SIM, REAL, nranks=2)
    assert list(table.columns) == validate.TABLE_COLUMNS
    assert list(table["kind"]) == ["allgather", "allreduce", "compute", "total"]

    compute = row(table, "compute")
    assert compute["count"] == 1 and compute["flops"] == 1e9 and compute["nbytes"] == 0
    assert compute["predicted_s"] == pytest.approx(1.0)
    # Repeats give 2, 4, 3 s: median 3, spread 2..4.
    assert compute["measured_s"] == pytest.approx(3.0)
    assert (compute["measured_min_s"], compute["measured_max_s"]) == pytest.approx((2.0, 4.0))
    assert compute["error_pct"] == pytest.approx((1.0 - 3.0) / 3.0 * 100)
    assert math.isnan(compute["algbw_GBps"]) and math.isnan(compute["busbw_GBps"])

    allreduce = row(table, "allreduce")
    assert allreduce["count"] == 2 and allreduce["algorithm"] == "ring"
    # Simulated: op 1 takes max(0.5, 0.4) = 0.5 s, op 2 0.5 s; median 0.5.
    assert allreduce["predicted_s"] == pytest.approx(0.5)
    # Per repeat, the median of the two ops' max-over-ranks times: 0.8, 1.0, 1.0.
    assert allreduce["measured_s"] == pytest.approx(1.0)
    assert (allreduce["measured_min_s"], allreduce["measured_max_s"]) == pytest.approx((0.8, 1.0))
    assert allreduce["error_pct"] == pytest.approx(-50.0)
    assert allreduce["algbw_GBps"] == pytest.approx(1e6 / 1.0 / 1e9)
    assert allreduce["busbw_GBps"] == pytest.approx(1e6 / 1.0 / 1e9 * 2 * (2 - 1) / 2)
    assert allreduce["predicted_algbw_GBps"] == pytest.approx(1e6 / 0.5 / 1e9)
    assert allreduce["predicted_busbw_GBps"] == pytest.approx(1e6 / 0.5 / 1e9)

    allgather = row(table, "allgather")
    assert allgather["predicted_s"] == pytest.approx(0.001)
    assert allgather["measured_s"] == pytest.approx(0.002)
    assert allgather["busbw_GBps"] == pytest.approx(1000 / 0.002 / 1e9 * 0.5)
    assert allgather["predicted_busbw_GBps"] == pytest.approx(1000 / 0.001 / 1e9 * 0.5)
    assert allgather["error_pct"] == pytest.approx(-50.0)

    total = row(table, "total")
    # Makespans: simulated 2.001 s; measured 3.602, 6.004, 5.001 s.
    assert total["predicted_s"] == pytest.approx(2.001)
    assert total["measured_s"] == pytest.approx(5.001)
    assert (total["measured_min_s"], total["measured_max_s"]) == pytest.approx((3.602, 6.004))
    assert total["count"] == 4
    assert validate.median_abs_error_pct(table) == pytest.approx(50.0)


def test_a_written_table_is_predicted_again_from_new_records(tmp_path):
    # Written and read back, then re-predicted from the same records: the same table;
    # from records twice as slow: predictions doubled, measurements untouched.
    table = validate.validation_table(SIM, REAL, nranks=2)
    table.to_csv(tmp_path / "t.csv", index=False)
    back = pd.read_csv(tmp_path / "t.csv")
    again = validate.repredicted(back, SIM, nranks=2)
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    slow = SIM.assign(start_s=SIM["start_s"] * 2, end_s=SIM["end_s"] * 2)
    doubled = validate.repredicted(back, slow, nranks=2)
    assert doubled["predicted_s"].tolist() == pytest.approx((table["predicted_s"] * 2).tolist())
    assert doubled["measured_s"].tolist() == table["measured_s"].tolist()
    assert row(doubled, "allreduce")["error_pct"] == pytest.approx(0.0)
    assert row(doubled, "allreduce")["predicted_algbw_GBps"] == pytest.approx(1e6 / 1.0 / 1e9)


def test_busbw_factors_follow_nccl_tests():
    n = 8
    assert validate.busbw_factor("allreduce", n) == pytest.approx(2 * 7 / 8)
    for kind in ("allgather", "reduce_scatter", "alltoall"):
        assert validate.busbw_factor(kind, n) == pytest.approx(7 / 8)
    for kind in ("broadcast", "reduce", "send", "recv"):
        assert validate.busbw_factor(kind, n) == 1.0
    assert math.isnan(validate.busbw_factor("compute", n))
    assert validate.bandwidths_GBps("broadcast", 4_000_000_000, 2.0, n) == pytest.approx((2.0, 2.0))
    assert all(math.isnan(v) for v in validate.bandwidths_GBps("barrier", 0, 1.0, n))


def test_error_sign_and_missing_rows():
    assert validate.error_pct(1.2, 1.0) == pytest.approx(20.0)  # predicted too slow: positive
    assert validate.error_pct(0.8, 1.0) == pytest.approx(-20.0)
    assert math.isnan(validate.error_pct(1.0, 0.0))
    # A CSV round trip (empty algorithm read as NaN) and a row only one side has.
    sim = SIM.assign(algorithm=SIM["algorithm"].replace("", float("nan")))
    real = REAL[REAL["kind"] != "allgather"]
    table = validate.validation_table(sim, real, nranks=2)
    allgather = row(table, "allgather")
    assert allgather["predicted_s"] == pytest.approx(0.001) and math.isnan(allgather["measured_s"])
    assert row(table, "compute")["algorithm"] == ""


def test_rows_are_per_group_and_busbw_uses_the_group_size():
    from workloads.groups import groups_from_dict

    groups = groups_from_dict({"tp": {"blocks": 2}, "odd": [[0, 1, 2], [3]]}, 4)

    def four_ranks(repeat=None):
        rows = []
        for rank in range(4):
            rows += [(rank, 0, "tp", "allreduce", "ring", 1_000_000, 0.0, 0.0, 1.0),
                     (rank, 1, "", "allreduce", "ring", 1_000_000, 0.0, 1.0, 3.0),
                     (rank, 2, "odd", "allgather", "ring", 3000, 0.0, 3.0, 3.5)]
        full = [(r, i, g, k, a, -1, n, f, s, e, math.nan) for r, i, g, k, a, n, f, s, e in rows]
        frame = pd.DataFrame(full, columns=list(RECORD_COLUMNS))
        return frame if repeat is None else frame.assign(repeat=repeat)

    table = validate.validation_table(four_ranks(), four_ranks(0), nranks=4, groups=groups)
    assert list(table.columns) == validate.TABLE_COLUMNS
    allreduces = table[table["kind"] == "allreduce"].set_index("group")
    assert sorted(allreduces.index) == ["", "tp"]  # a TP and a DP all-reduce of one size: two rows
    # busbw = algbw * 2(n-1)/n with n the group's size: 2 on tp, 4 on the world.
    assert allreduces.loc["tp", "busbw_GBps"] == pytest.approx(1e6 / 1.0 / 1e9 * 2 * 1 / 2)
    assert allreduces.loc["", "busbw_GBps"] == pytest.approx(1e6 / 2.0 / 1e9 * 2 * 3 / 4)
    # Groups of one name but different sizes: no single busbw factor.
    odd = row(table, "allgather")
    assert odd["group"] == "odd" and odd["algbw_GBps"] > 0 and math.isnan(odd["busbw_GBps"])
    text = validate.format_validation(table)
    assert "group" in text.splitlines()[0] and " tp " in text
    # The world-only table keeps its columns as they were.
    assert "group" not in validate.format_validation(validate.validation_table(SIM, REAL, nranks=2)).splitlines()[0]


# -- a real run ---------------------------------------------------------------------

TINY = """\
name: tiny-validate
description: two ranks, a little of everything
topology: {builder: switch, n: 2, bandwidth_bytes_per_s: 12.5e+9, latency_s: 2.0e-6}
workload:
  kind: programs
  ranks:
    - [{kind: compute, flops: 2.0e+6}, {kind: allreduce, nbytes: 65536}, {kind: send, peer: 1, nbytes: 1024},
       {kind: allgather, nbytes: 4096}]
    - [{kind: compute, flops: 2.0e+6}, {kind: allreduce, nbytes: 65536}, {kind: recv, peer: 0, nbytes: 1024},
       {kind: allgather, nbytes: 4096}]
"""


def _mpi_reason() -> str:
    from executors.real.mpi import MPIExecutor

    return MPIExecutor.unavailable_reason()


@pytest.mark.mpi
def test_validate_mpi_end_to_end(tmp_path, capsys):
    reason = _mpi_reason()
    if reason:
        pytest.skip(f"MPI backend unavailable: {reason}")
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "out"
    code = validate.main([str(path), "--backend", "mpi", "--repeats", "2", "--warmup", "1", "--out", str(out),
                          "--timeout", "60"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    for name in ("validation.csv", "validation.png", "sim_records.csv", "real_records.csv", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "validation.csv", keep_default_na=False, na_values=[""])
    assert set(validate.TABLE_COLUMNS) <= set(table.columns)
    assert set(table["kind"]) == {"compute", "allreduce", "send", "recv", "allgather", "total"}
    assert (table["count"] > 0).all() and (table["measured_s"] > 0).all() and (table["predicted_s"] > 0).all()
    real = pd.read_csv(out / "real_records.csv")
    assert sorted(real["repeat"].unique()) == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "mpi" and summary["ranks"] == 2 and summary["mode"] == "native"
    assert summary["timing"] == "aligned" and summary["hosts"]
    assert summary["median_abs_error_pct"] is not None
    assert "allreduce" in printed.out and "error %" in printed.out and str(out) in printed.out


def test_validate_rejects_bad_scenario_before_running(tmp_path, capsys):
    bad = tmp_path / "dead.yaml"
    bad.write_text("topology: {builder: switch, n: 2}\nworkload:\n  kind: programs\n  ranks:\n"
                   "    - [{kind: recv, peer: 1, nbytes: 8}]\n    - [{kind: recv, peer: 0, nbytes: 8}]\n")
    out = tmp_path / "out"
    assert validate.main([str(bad), "--backend", "mpi", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "deadlock" in err and "Traceback" not in err
    assert not out.exists()
    bad.write_text("topology: {builder: ring, n: 2}\nworkload: {kind: collective, op: allreduce, nbytes: -1}\n")
    assert validate.main([str(bad), "--backend", "mpi", "--out", str(out)]) == 2
    assert validate.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--backend", "mpi", "--repeats", "0",
                          "--out", str(out)]) == 2
    assert not out.exists()


def test_validate_profile_must_exist(tmp_path, capsys):
    out = tmp_path / "out"
    assert validate.main([str(SCENARIOS / "pingpong_programs.yaml"), "--backend", "mpi", "--out", str(out),
                          "--profile", str(tmp_path / "missing.yaml")]) == 2
    assert "--profile" in capsys.readouterr().err
    assert not out.exists()


# -- sbatch -------------------------------------------------------------------------


def test_sbatch_mpi_script(capsys):
    code = sbatch.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--nodes", "2", "--ntasks-per-node", "4",
                        "--partition", "cpu", "--account", "proj", "--time", "01:00:00", "--", "--repeats", "20"])
    assert code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=2", "--ntasks-per-node=4", "--time=01:00:00", "--partition=cpu", "--account=proj"):
        assert f"#SBATCH {directive}" in lines
    assert "set -euo pipefail" in lines
    assert 'cd "${SLURM_SUBMIT_DIR:-.}"' in lines
    run = next(line for line in lines if line.startswith("srun "))
    assert "--mpi=" in run and "--ntasks-per-node=4" in run
    assert "-m experiments.validate" in run and "ring8_allreduce.yaml --backend mpi" in run
    assert "${SLURM_JOB_ID}" in run and run.endswith("--repeats 20")
    assert "pmi2" in text and "pmix" in text and "torchrun" not in text


def test_sbatch_torch_script(tmp_path, capsys):
    target = tmp_path / "job.sh"
    code = sbatch.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--nodes", "4", "--ntasks-per-node", "2",
                        "--backend", "torch", "--gpus-per-node", "2", "--command", "run", "--out", str(target)])
    assert code == 0
    text = target.read_text()
    assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=2" in text
    assert 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in text
    assert "srun --nodes=4 --ntasks-per-node=1" in text
    assert "--nnodes \"$SLURM_NNODES\" --nproc-per-node 2" in text
    assert '--rdzv-backend c10d --rdzv-endpoint "$head:29500"' in text
    assert "-m experiments.run" in text and "--backend torch" in text and "TORCHRUN=${TORCHRUN:-torchrun}" in text
    if shutil.which("bash"):
        import subprocess

        assert subprocess.run(["bash", "-n", str(target)]).returncode == 0


def test_sbatch_rank_mismatch_exits_2(capsys):
    code = sbatch.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--nodes", "3", "--ntasks-per-node", "2"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "8 ranks" in captured.err and "3" in captured.err and "6" in captured.err
    assert sbatch.main([str(SCENARIOS / "ring8_allreduce.yaml"), "--nodes", "2", "--ntasks-per-node", "4",
                        "--time", "soon"]) == 2
