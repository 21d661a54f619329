"""experiments.plan: enumeration, memory filtering, ranking, failures and bad input, on a tiny model."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from experiments import plan
from workloads.transformer.memory import check_fits, memory_per_stage
from workloads.transformer.spec import ModelSpec, ParallelSpec, TrainingSpec

TINY = "name: tiny\nlayers: 4\nhidden: 64\nheads: 8\nseq_len: 32\nvocab: 128\n"
# Every search below is one schedule, one ZeRO stage, no recompute, no SP, unless it says otherwise.
NARROW = ["--schedule", "1f1b", "--zero", "0", "--recompute", "none", "--sequence-parallel", "off"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture
def small_gpu_cluster(tmp_path):
    """A cluster file: servers of 4 GPUs with 1 MiB of memory each (the tiny model needs ~0.3-3.5 MiB)."""
    node = tmp_path / "small_gpu.yaml"
    node.write_text("name: small_gpu\npeak_flops_per_s: {bf16: 1.0e+12}\ndefault_precision: bf16\n"
                    "memory_bytes: 1048576\nmemory_bandwidth_bytes_per_s: 1.0e+11\n")
    cluster = tmp_path / "small_cluster.yaml"
    cluster.write_text(f"name: small\nnode_type: {node}\ngpus_per_node: 4\n"
                       "scale_up_bandwidth_bytes_per_s: 1.0e+11\nscale_out_bandwidth_bytes_per_s: 1.0e+10\n")
    return str(cluster)


def base(tiny, tmp_path, *extra, out="out"):
    return ["--model", tiny, "--cluster", "dgx_a100", "--gpus", "16", "--global-batch", "8", "--jobs", "1",
            "--no-plots", "--out", str(tmp_path / out), *extra]


def enumerate_counts(tiny, *extra):
    args = plan.build_parser().parse_args(["--model", tiny, "--cluster", "dgx_a100", "--gpus", "16",
                                           "--global-batch", "8", *extra])
    _, model, _ = plan.resolve_model(tiny, None)
    search = plan.Search(tiny, model, 16, 8, "bf16", plan.candidates(args, model, 8, 8))
    layouts, dropped = plan.enumerate_layouts(search)
    return layouts, dropped


def test_enumeration_counts_hand_checked(tiny):
    # tp in {1,2,4,8} (divisors of 8 GPUs per server dividing 8 heads), pp in {1,2,4}, mb in {1,2,4,8}:
    # 48 combinations.  tp x pp must divide 16 (not 8 x 4) and 8 a multiple of mb x dp:
    # (tp,pp) -> dp: (1,1) 16: none; (1,2),(2,1) 8: mb 1; (1,4),(2,2),(4,1) 4: mb 1,2;
    # (2,4),(4,2),(8,1) 2: mb 1,2,4; (4,4),(8,2) 1: mb 1,2,4,8  ->  1+1 + 3x2 + 3x3 + 2x4 = 25.
    layouts, dropped = enumerate_counts(tiny, *NARROW)
    assert (len(layouts), dropped) == (25, 23)
    assert all(r["tp"] * r["pp"] * r["dp"] == 16 and 8 % (r["micro_batch"] * r["dp"]) == 0 for r in layouts)
    # SP doubles the tp > 1 combinations only: 12 + 36 x 2 = 84, of which 3 + 22 x 2 = 47 divide.
    layouts, dropped = enumerate_counts(tiny, "--schedule", "1f1b", "--zero", "0", "--recompute", "none")
    assert (len(layouts), dropped) == (47, 37)
    # Interleaved with v = 2 needs pp >= 2, pp x 2 | 4 layers (pp = 2) and m a multiple of pp:
    # (1,2) m=1 no; (2,2) mb 1; (4,2) mb 1,2; (8,2) mb 1,2,4  ->  6 of 48.
    layouts, dropped = enumerate_counts(tiny, "--schedule", "interleaved", "--virtual-stages", "2", "--zero", "0",
                                        "--recompute", "none", "--sequence-parallel", "off")
    assert (len(layouts), dropped) == (6, 42)
    assert {(r["tp"], r["pp"], r["micro_batch"]) for r in layouts} == {
        (2, 2, 1), (4, 2, 1), (4, 2, 2), (8, 2, 1), (8, 2, 2), (8, 2, 4)}


def test_runs_ranks_and_writes(tiny, tmp_path, capsys):
    assert plan.main(base(tiny, tmp_path, *NARROW, "--max-points", "5", "--top", "3")) == 0
    printed = capsys.readouterr()
    assert "25 do" in printed.out and "23 do not divide" in printed.out
    assert "simulating 5 of the 25 fitting layouts" in printed.out
    assert re.search(r"^\[5/5 \d+\.\d s elapsed\] .* step ", printed.err, re.M), printed.err
    frame = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert len(frame) == 25
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 5 and list(ok["rank"]) == [1, 2, 3, 4, 5]
    assert list(ok["step_time_s"]) == sorted(ok["step_time_s"])
    assert (ok["mfu"] > 0).all() and (ok["tokens_per_s"] > 0).all()
    assert (frame["status"] == "not simulated").sum() == 20
    # The ones simulated are those with the smallest ideal estimate.
    chosen = set(ok.index)
    assert frame.loc[list(chosen), "estimate_s"].max() <= frame.drop(index=list(chosen))["estimate_s"].min()


def test_same_arguments_same_csv_bytes(tiny, tmp_path):
    extra = [*NARROW, "--max-points", "6", "--zero", "0,1"]
    assert plan.main(base(tiny, tmp_path, *extra, out="a")) == 0
    assert plan.main(base(tiny, tmp_path, *extra, "--jobs", "2", out="b")) == 0
    first = (tmp_path / "a" / "plan.csv").read_bytes()
    assert first == (tmp_path / "b" / "plan.csv").read_bytes()
    assert b"wall" not in first


def test_memory_filter_matches_the_memory_model(tiny, small_gpu_cluster, tmp_path, capsys):
    argv = ["--model", tiny, "--cluster", small_gpu_cluster, "--gpus", "8", "--global-batch", "8", "--jobs", "1",
            "--no-plots", "--out", str(tmp_path / "out"), "--schedule", "1f1b", "--recompute", "none",
            "--sequence-parallel", "off", "--zero", "0,3", "--max-points", "2", "--tp", "1,2,4"]
    assert plan.main(argv) == 0
    out = capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "out" / "plan.csv", keep_default_na=False)
    model = ModelSpec.from_dict({"name": "tiny", "layers": 4, "hidden": 64, "heads": 8, "seq_len": 32, "vocab": 128})
    capacity = 2**20
    over = 0
    for row in frame.to_dict("records"):
        parallel = ParallelSpec(tp=row["tp"], pp=row["pp"], zero=row["zero"], schedule="1f1b")
        reports = memory_per_stage(model, parallel, TrainingSpec(global_batch=8, micro_batch=row["micro_batch"]), 8)
        note = check_fits(reports, capacity)
        peak = max(r.total_bytes for r in reports)
        assert str(row["fits"]) == str(not note)
        assert row["memory_note"] == note
        assert float(row["memory_bytes"]) == pytest.approx(peak)
        if note:
            over += 1
            assert row["status"] == "does not fit" and row["rank"] == ""
            assert float(row["over_bytes"]) == pytest.approx(peak - capacity)
            assert "GPUs:" in note and "over" in note
        else:
            assert float(row["over_bytes"]) == 0.0
    assert 0 < over < len(frame)
    assert f"memory: {over} of {len(frame)} do not fit" in out


def test_nothing_fits_exits_2(tiny, small_gpu_cluster, tmp_path, capsys):
    argv = ["--model", tiny, "--cluster", small_gpu_cluster, "--gpus", "4", "--global-batch", "4", "--tp", "1",
            "--pp", "1", "--zero", "0", "--out", str(tmp_path / "out"), "--no-plots"]
    assert plan.main(argv) == 2
    err = capsys.readouterr().err
    assert "no layout fits in memory" in err and len(err.strip().splitlines()) == 1
    frame = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert not frame["fits"].any() and frame["memory_note"].str.contains("over").all()


def test_a_failing_point_does_not_stop_the_search(tiny, tmp_path, monkeypatch, capsys):
    real = plan.simulate_point

    def flaky(data, limit):
        if data["workload"]["tp"] == 2:
            # As the simulator's own memory limit would refuse it.
            return real(data, 1)
        return real(data, limit)

    monkeypatch.setattr(plan, "simulate_point", flaky)
    assert plan.main(base(tiny, tmp_path, *NARROW, "--max-points", "25")) == 0
    err = capsys.readouterr().err
    assert "failed:" in err
    frame = pd.read_csv(tmp_path / "out" / "plan.csv", keep_default_na=False)
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == (frame["tp"] == 2).sum() > 0
    assert failed["error"].str.contains("memory").all()
    assert (frame[frame["tp"] != 2]["status"] == "ok").all()


def test_simulate_point_returns_the_error():
    result = plan.simulate_point({"topology": {"builder": "gpu_cluster", "preset": "dgx_a100", "nodes": 1},
                                  "workload": {"kind": "transformer", "model": "no_such_model"}}, None)
    assert "no_such_model" in result["error"]


def test_nothing_simulated_exits_1(tiny, tmp_path, capsys):
    assert plan.main(base(tiny, tmp_path, *NARROW, "--max-points", "2", "--max-memory", "1")) == 1
    captured = capsys.readouterr()
    assert "no layout could be simulated" in captured.err
    frame = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert (frame["status"] == "failed").sum() == 2


def test_plot_is_written(tiny, tmp_path):
    argv = [a for a in base(tiny, tmp_path, *NARROW, "--max-points", "3") if a != "--no-plots"]
    assert plan.main(argv) == 0
    assert (tmp_path / "out" / "plan.png").stat().st_size > 0


def test_help_explains_restrictions_and_columns(capsys):
    with pytest.raises(SystemExit) as exc:
        plan.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--max-points", "smallest estimated step time", "exposed_tp/pp/dp/ep_s", "mfu", "fits", "--tp 16",
                 "behind #1"):
        assert word in text


@pytest.mark.parametrize("extra, message", [
    (["--model", "no_such_model"], "unknown model"),
    (["--cluster", "no_such_cluster"], "unknown cluster preset"),
    (["--gpus", "12"], "not a multiple of the 8 GPUs per server"),
    (["--tp", "3", "--pp", "3"], "no layout divides"),
])
def test_bad_input_exits_2(tiny, tmp_path, capsys, extra, message):
    argv = ["--model", tiny, "--cluster", "dgx_a100", "--gpus", "16", "--out", str(tmp_path / "out")]
    for i in range(0, len(extra), 2):
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i:i + 2]
    assert plan.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--zero", "4"], ["--recompute", "sometimes"], ["--tp", "0"], ["--gpus", "x"]])
def test_bad_option_values_exit_2(tiny, argv, capsys):
    full = ["--model", tiny, "--cluster", "dgx_a100", "--gpus", "16"]
    full = full[:-2] + (argv if argv[0] == "--gpus" else ["--gpus", "16"] + argv)
    with pytest.raises(SystemExit) as exc:
        plan.main(full)
    assert exc.value.code == 2


def test_seq_len_override(tiny):
    value, spec, name = plan.resolve_model(tiny, 64)
    assert spec.seq_len == 64 and value["seq_len"] == 64 and name == "tiny"
    value, spec, _ = plan.resolve_model("gpt3_175b", None)
    assert value == "gpt3_175b" and spec.seq_len == 2048


def test_moe_searches_expert_parallelism(tmp_path, capsys):
    moe = tmp_path / "tiny_moe.yaml"
    moe.write_text(TINY.replace("name: tiny", "name: tiny_moe") + "experts: 4\ntop_k: 2\n")
    layouts, _ = enumerate_counts(str(moe), *NARROW, "--tp", "2", "--pp", "1")
    # tp 2, pp 1: dp 8, mb 1 only; ep in {1, 2, 4} (divisors of 4 experts, all dividing dp 8).
    assert sorted(r["ep"] for r in layouts) == [1, 2, 4]
    argv = ["--model", str(moe), "--cluster", "dgx_a100", "--gpus", "16", "--global-batch", "8", "--jobs", "1",
            "--no-plots", "--out", str(tmp_path / "out"), *NARROW, "--tp", "2", "--pp", "1", "--ep", "2,4"]
    assert plan.main(argv) == 0
    assert "EP s" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert sorted(frame["ep"]) == [2, 4] and (frame["status"] == "ok").all()
    assert (frame["exposed_ep_s"] >= 0).all()


def test_failures_are_summed_up_by_reason():
    over = ("ScenarioError: layout: the topology (7.8 MiB) and the programs, 1 operations over 8 ranks (3 GiB), "
            "need an estimated {} of memory, over the limit of 2 GiB (2147483648 B); raise the limit with ...")
    row = {"tp": 8, "pp": 8, "dp": 16, "ep": 1, "micro_batch": 1, "schedule": "1f1b", "virtual_stages": 1,
           "zero": 1, "recompute": "none", "sequence_parallel": True}
    failed = [dict(row, error=over.format("5.686 GiB")), dict(row, error=over.format("2.822 GiB")),
              dict(row, error="DeadlockError: rank 3 waits")]
    text = plan.failure_summary(failed)
    assert text.splitlines() == [
        "3 layout(s) failed in the simulator (status=failed, error in plan.csv):",
        "  2 over the simulator's memory limit of 2 GiB (estimated 2.822 GiB to 5.686 GiB): raise it with "
        "--max-memory, or search a smaller --global-batch (the operations grow with it)",
        "  1 other(s), the first: tp=8 pp=8 dp=16 mb=1 1f1b zero=1 rc=none sp: DeadlockError: rank 3 waits"]


def test_defaults_for_large_jobs():
    # One sequence per GPU, at most 16M tokens a step (Llama 3 405B's batch: 2,048 sequences of 8,192).
    assert plan.default_global_batch(64, 2048) == 64
    assert plan.default_global_batch(1024, 2048) == 1024
    assert plan.default_global_batch(16384, 8192) == 2048
    assert plan.default_global_batch(16384, 2**30) == 1
    # 16 points up to 1,024 GPUs, then fewer, at least 2.
    assert [plan.default_max_points(g) for g in (8, 1024, 2048, 4096, 8192, 16384)] == [16, 16, 8, 4, 2, 2]


def test_pipeline_candidates_include_stages_of_unequal_depth():
    args = plan.build_parser().parse_args(["--model", "llama3_405b", "--cluster", "dgx_h100", "--gpus", "64"])
    model = ModelSpec(layers=126, hidden=1024, heads=16)
    # Divisors of 126 and the powers of two below it: 16 stages of 7 or 8 layers, as Llama 3 405B ran.
    assert plan.candidates(args, model, 8, 64)["pp"] == (1, 2, 3, 4, 6, 7, 8, 9, 14, 16, 18, 21, 32, 42, 63, 64, 126)
