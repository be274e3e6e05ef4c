"""`compare` on real runs in a real MLflow store (random method, tiny budgets)."""

import pytest
from mlflow.tracking import MlflowClient

from harness.compare import compare
from harness.config import RunConfig
from harness.errors import HarnessError
from harness.runner import run_stream
from harness.streams import EvalSpec, StreamSpec, TaskSpec
from tasks.base import EnvConfig

STREAM = StreamSpec("cmp", (TaskSpec("cartpole-balance", 200), TaskSpec("walker-stand", 200)), EvalSpec(100, 1))


def _run(tmp_path, seed, stream=STREAM, action_repeat=2):
    cfg = RunConfig(stream=stream, method="random", seed=seed, video_frames=0, runs_dir=str(tmp_path / "runs"),
                    env=EnvConfig(obs_type="proprio", action_repeat=action_repeat))
    return run_stream(cfg, echo=lambda *_: None)


def test_compare_writes_table_plots_and_mlflow_run(mlflow_uri, tmp_path):
    for seed in (0, 1):
        _run(tmp_path, seed)
    odd = _run(tmp_path, 2, action_repeat=4)  # different settings: reported, not mixed
    comp = compare("cmp", out_dir=tmp_path / "out")
    (row,) = comp.rows
    assert row["method"] == "random" and row["runs"] == 2 and row["seeds"] == "0,1"
    assert 0 <= row["iqm_ci_low"] <= row["iqm"] <= row["iqm_ci_high"] <= 1
    assert 0 <= row["avg_performance"] <= 1 and "final 1-walker-stand" in row
    # each task when it was learnt, and its curve during its own training (the paper's Fig. 5 measures)
    for name in ("just_trained", "auc"):
        assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"] and 0 <= row[name] <= 1, (name, row)
    assert row["just_trained"] - row["avg_performance"] == pytest.approx(row["forgetting"])
    assert any(odd.run_id in e and "run.env.action_repeat" in e for e in comp.excluded)
    for name in ("comparison.csv", "comparison.md", "learning_curves.png", "R_matrices.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    client = MlflowClient(mlflow_uri)
    run = client.get_run(comp.run_id)
    assert run.data.tags["run_type"] == "comparison"
    assert {a.path for a in client.list_artifacts(comp.run_id)} >= {"comparison.md", "R_matrices.png"}
    # The comparison run itself is never taken for a method run.
    again = compare("cmp", out_dir=tmp_path / "out2")
    assert again.rows[0]["runs"] == 2
    # Seed 1 once more: the newer run replaces the older one instead of counting twice.
    assert not any("superseded" in e for e in again.excluded)
    newer = _run(tmp_path, 1)
    third = compare("cmp", out_dir=tmp_path / "out3")
    assert third.rows[0]["runs"] == 2 and third.rows[0]["seeds"] == "0,1"
    assert any(f"superseded by the newer run {newer.run_id}" in e for e in third.excluded), third.excluded


def test_compare_names_methods_without_runs(mlflow_uri, tmp_path):
    _run(tmp_path, 0)
    with pytest.raises(HarnessError, match="no finished runs of method.s. dreamer on stream 'cmp'; "
                                           "methods with finished runs: random"):
        compare("cmp", methods=["random", "dreamer"], out_dir=tmp_path / "o")
    with pytest.raises(HarnessError, match="no runs of stream 'nothing'"):
        compare("nothing")


def test_compare_ends_with_the_multitask_reference(mlflow_uri, tmp_path):
    """`multitask` runs of `<stream>-mt` with the same per-task budgets give the table's last row: the mean of
    each task's columns in their last R row; forgetting and forward transfer do not apply; other budgets are
    named and left out."""
    import json
    import math

    from harness.streams import multitask_stream

    for seed in (0, 1):
        _run(tmp_path, seed)
    env = EnvConfig(obs_type="proprio", action_repeat=2)
    mt = multitask_stream(STREAM, rounds=2)
    res = run_stream(RunConfig(stream=mt, method="multitask", preset="debug", seed=0, video_frames=0,
                               runs_dir=str(tmp_path / "runs"), env=env), echo=lambda *_: None)
    other = multitask_stream(StreamSpec("cmp", (TaskSpec("cartpole-balance", 100), TaskSpec("walker-stand", 200)),
                                        EvalSpec(100, 1)), rounds=2)
    odd = run_stream(RunConfig(stream=other, method="multitask", preset="debug", seed=1, video_frames=0,
                               runs_dir=str(tmp_path / "runs"), env=env), echo=lambda *_: None)
    comp = compare("cmp", out_dir=tmp_path / "out")
    assert [r["method"] for r in comp.rows] == ["random", "multitask (reference)"]
    ref = comp.rows[-1]
    assert ref["runs"] == 1 and ref["seeds"] == "0"
    assert math.isnan(ref["forgetting"]) and math.isnan(ref["forward_transfer"])
    client = MlflowClient(mlflow_uri)
    rj = json.loads(open(client.download_artifacts(res.run_id, "R_matrix.json", str(tmp_path))).read())
    last = rj["R"][-1]
    for j, name in enumerate(("cartpole-balance", "walker-stand")):
        cols = [last[k] for k, n in enumerate(rj["tasks"]) if n == name]
        assert len(cols) == 2
        assert abs(ref[f"final {j}-{name}"] - sum(cols) / 2) < 1e-9
    assert abs(ref["avg_performance"] - (ref["final 0-cartpole-balance"] + ref["final 1-walker-stand"]) / 200) < 1e-9
    assert any(odd.run_id in e and "budgets per task" in e for e in comp.excluded), comp.excluded
    assert "multitask (reference)" in (tmp_path / "out" / "comparison.md").read_text()
    # The random runs' CL metrics carry their CIs.
    row = comp.rows[0]
    assert row["avg_performance_ci_low"] <= row["avg_performance"] <= row["avg_performance_ci_high"]


def test_reference_results_round_trip_and_refuse_other_settings(mlflow_uri, tmp_path):
    """`--save-reference` writes the compared runs' curves and scores; `--reference FILE` shows them as ref:*
    rows next to new runs of the same stream and settings, and refuses runs made with other settings."""
    import json

    for seed in (0, 1):
        _run(tmp_path, seed)
    ref_file = tmp_path / "ref.json"
    made = compare("cmp", out_dir=tmp_path / "a", save_reference=ref_file)
    ref = json.loads(ref_file.read_text())
    assert ref["stream"] == "cmp" and ref["methods"]["random"]["seeds"] == ["0", "1"]
    assert len(ref["methods"]["random"]["final"]) == 2 and ref["commit"] and ref["versions"]
    assert ref["methods"]["random"]["curves"]["walker-stand"]["env_frames"]
    again = compare("cmp", out_dir=tmp_path / "b", reference=str(ref_file))
    assert [r["method"] for r in again.rows] == ["random", "ref:random"]
    assert again.rows[1]["avg_performance"] == made.rows[0]["avg_performance"]
    assert "ref:*" in (tmp_path / "b" / "comparison.md").read_text()
    # a reference made before the just_trained column: derived from its R matrices
    old = json.loads(ref_file.read_text())
    for k in ("just_trained", "just_trained_ci_low", "just_trained_ci_high"):
        del old["methods"]["random"]["row"][k]
    (tmp_path / "old.json").write_text(json.dumps(old))
    before = compare("cmp", out_dir=tmp_path / "b1", reference=str(tmp_path / "old.json")).rows[1]
    assert before["just_trained"] == pytest.approx(made.rows[0]["just_trained"], abs=1e-4)   # R stored to 0.01
    ref["methods"]["dreamer"] = ref["methods"]["random"]   # a reference of more methods than the user compares
    ref_file.write_text(json.dumps(ref))
    assert [r["method"] for r in compare("cmp", out_dir=tmp_path / "b2", reference=str(ref_file)).rows] == \
        ["random", "ref:dreamer", "ref:random"]
    only = compare("cmp", methods=["random"], out_dir=tmp_path / "b3", reference=str(ref_file))
    assert [r["method"] for r in only.rows] == ["random", "ref:random"]   # --methods applies to the reference too
    # runs with another action repeat on another stream's name: refused, naming what differs
    other = StreamSpec("cmp2", STREAM.tasks, STREAM.eval)
    _run(tmp_path, 0, stream=other, action_repeat=4)
    with pytest.raises(HarnessError, match=r"other settings than these runs: stream 'cmp' \(yours: 'cmp2'\); "
                                           r"run.env.action_repeat='2' \(yours: '4'\)"):
        compare("cmp2", out_dir=tmp_path / "c", reference=str(ref_file))
    with pytest.raises(HarnessError, match="no reference 'nope'"):
        compare("cmp", out_dir=tmp_path / "d", reference="nope")
    assert compare("cmp", out_dir=tmp_path / "e", reference="auto").rows[-1]["method"] == "random"  # none shipped
    for bad in ("/proc/ref.json", str(tmp_path)):
        with pytest.raises(HarnessError, match="--save-reference"):
            compare("cmp", out_dir=tmp_path / "f", save_reference=bad)


def test_a_bad_reference_is_named_before_the_runs_are_looked_for(mlflow_uri):
    """`compare STREAM --reference X` with a wrong X says so, even where STREAM has no finished runs yet."""
    with pytest.raises(HarnessError, match="no reference 'nope'"):
        compare("quick", reference="nope")


def test_packnet_gsa_ratio_is_taken_on_the_adaptation_measures(tmp_path):
    """The paper's 20-60% (Fig. 5) is about returns while each task trains: the Ant benchmark's ratio is given on
    just_trained and auc first, then on the average after the stream; a table without those columns says n/a."""
    import csv

    from benchmarks.bench_ant import packnet_gsa_ratio
    rows = [{"method": "gsa", "seeds": "0", "avg_performance": 0.2, "just_trained": 0.4, "auc": 0.5,
             "final 0-quadruped-stand": 20.0},
            {"method": "packnet", "seeds": "0,1", "avg_performance": 0.3, "just_trained": 0.1, "auc": 0.25,
             "final 0-quadruped-stand": 30.0}]

    def table(name: str, drop: tuple[str, ...] = ()):
        path = tmp_path / name
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in drop])
            w.writeheader()
            w.writerows({k: v for k, v in r.items() if k not in drop} for r in rows)
        return path

    text = packnet_gsa_ratio(table("comparison.csv"))
    assert "just_trained 25% (0.100 / 0.400), auc 50% (0.250 / 0.500)" in text, text
    assert "avg_performance 150%" in text and "quadruped-stand 150%" in text and "packnet 0,1" in text, text
    older = packnet_gsa_ratio(table("old.csv", drop=("just_trained", "auc")))   # a table from before the columns
    assert "just_trained n/a, auc n/a" in older and "avg_performance 150%" in older, older
    assert packnet_gsa_ratio(tmp_path / "missing.csv") is None
