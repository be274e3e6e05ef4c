"""Finished runs exported as records and imported into a fresh store (harness/archive.py): a sweep whose store
is lost goes on from its records without rerunning a finished job, and compares as it did."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import cli
from harness.archive import ARCHIVE_TAG, export_runs, import_runs
from harness.errors import HarnessError
from harness.sweep import SweepSpec, expand, find_runs, make_backend, run_sweep, state_of

RUN = {"obs": "proprio", "render_quality": "fast", "frames_per_task": 200, "eval_every": 200, "eval_episodes": 1,
       "video_frames": 0}


def _history(client: MlflowClient, run) -> dict:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}


def _children(client: MlflowClient, run) -> list:
    return sorted(client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"),
                  key=lambda r: r.data.tags.get("task_index", r.info.run_name))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A real sweep (random on the quick stream, 2 seeds) finished in store A; returns (store A uri, jobs)."""
    home = tmp_path_factory.mktemp("store-a")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    jobs = expand(SweepSpec(("quick",), ("random",), (0, 1), dict(RUN, runs_dir=str(home / "runs")), name="arch"))
    report = run_sweep(jobs, "arch", make_backend("local", concurrency=1), log_dir=str(home / "logs"),
                       echo=lambda *_: None, uri=uri)
    assert report.ok, report.results
    return uri, jobs


def test_records_carry_every_metric_and_task_run_into_a_fresh_store(finished_sweep, tmp_path):
    uri_a, jobs = finished_sweep
    a = MlflowClient(uri_a)
    files = export_runs(a, "arch", tmp_path / "records")
    assert sorted(f.stem for f in files) == sorted(j.key for j in jobs)
    assert export_runs(a, "arch", tmp_path / "records") == []          # kept records are not rewritten
    b = MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
    assert import_runs(b, [tmp_path / "records"]) == (2, 0)
    assert import_runs(b, [tmp_path / "records"]) == (0, 2)            # once only
    runs_a, runs_b = find_runs(a, "arch"), find_runs(b, "arch")
    assert runs_a.keys() == runs_b.keys()
    for key, ra in runs_a.items():
        rb = runs_b[key]
        assert rb.info.status == "FINISHED" and state_of(rb) == "finished"
        assert rb.data.tags[ARCHIVE_TAG] == ra.info.run_id
        assert rb.data.params == ra.data.params
        assert _history(b, rb) == _history(a, ra) and _history(a, ra)
        ka, kb = _children(a, ra), _children(b, rb)
        assert len(ka) == len(kb) == 3, "one task run per task of the quick stream"
        for x, y in zip(ka, kb):
            assert y.info.status == x.info.status and y.data.tags.get("task") == x.data.tags.get("task")
            assert _history(b, y) == _history(a, x)
    # The store the records came from holds them already: nothing is imported twice there either.
    assert import_runs(a, [tmp_path / "records"]) == (0, 2)


def test_a_sweep_on_the_fresh_store_skips_the_imported_jobs_and_compares_the_same(finished_sweep, tmp_path, monkeypatch):
    uri_a, jobs = finished_sweep
    export_runs(MlflowClient(uri_a), "arch", tmp_path / "records")
    uri_b = f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri_b)
    out = CliRunner().invoke(cli.main, ["runs", "import", str(tmp_path / "records")])
    assert out.exit_code == 0 and "2 run(s) imported" in out.output, out.output
    report = run_sweep(jobs, "arch", make_backend("local", concurrency=1), echo=lambda *_: None, uri=uri_b)
    assert [r.status for r in report.results] == ["SKIPPED", "SKIPPED"]
    tables = {}
    for name, uri in (("a", uri_a), ("b", uri_b)):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        res = CliRunner().invoke(cli.main, ["compare", "quick", "--methods", "random", "--seeds", "0,1", "--sweep",
                                            "arch", "--out", str(tmp_path / f"cmp-{name}")])
        assert res.exit_code == 0, res.output
        tables[name] = (tmp_path / f"cmp-{name}" / "comparison.csv").read_text()
    assert tables["a"] == tables["b"]


def test_bad_records_are_refused_before_anything_is_imported(finished_sweep, tmp_path, monkeypatch):
    uri_a, _ = finished_sweep
    good = export_runs(MlflowClient(uri_a), "arch", tmp_path / "records")
    (tmp_path / "records" / "zz-bad.json").write_text(json.dumps({"format": 1, "something": "else"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'b.db'}")
    for paths, message in (([str(tmp_path / "records")], "zz-bad.json is not a run record of format 1"),
                           ([str(tmp_path / "nowhere")], "no such file or folder of run records")):
        out = CliRunner().invoke(cli.main, ["runs", "import", *paths])
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
    b = MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
    assert find_runs(b, "arch") == {}, "nothing imported when one record is bad"
    assert len(good) == 2


def test_an_import_that_fails_midway_leaves_no_run_behind(finished_sweep, tmp_path, monkeypatch):
    uri_a, _ = finished_sweep
    export_runs(MlflowClient(uri_a), "arch", tmp_path / "records")
    b = MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
    calls = {"n": 0}
    real = b.log_batch

    def failing(run_id, metrics=(), params=(), tags=()):
        calls["n"] += 1
        if calls["n"] == 4:    # within the first record's task runs
            raise OSError("disk full")
        return real(run_id, metrics=metrics, params=params, tags=tags)
    monkeypatch.setattr(b, "log_batch", failing)
    with pytest.raises(OSError):
        import_runs(b, [tmp_path / "records"])
    active = b.search_runs([e.experiment_id for e in b.search_experiments()], "")
    assert active == [], [(r.info.run_id, r.info.status) for r in active]
    monkeypatch.undo()
    assert import_runs(b, [tmp_path / "records"]) == (2, 0)       # and the next import does it all


def test_export_needs_no_runs_and_says_so(mlflow_uri, tmp_path):
    out = CliRunner().invoke(cli.main, ["runs", "export", "--sweep", "none-such", "--out", str(tmp_path / "r")])
    assert out.exit_code == 0 and "0 run(s) of sweep 'none-such'" in out.output, out.output
    with pytest.raises(HarnessError, match="not a run record"):
        (tmp_path / "r" / "x.json").write_text("[1, 2]")
        import_runs(MlflowClient(mlflow_uri), [tmp_path / "r" / "x.json"])
    assert Path(tmp_path / "r").is_dir()


def test_sweep_archive_keeps_each_finished_run_and_a_fresh_store_skips_it(tmp_path, monkeypatch):
    """`sweep --archive DIR`: each run is written to DIR as it finishes; the same sweep on a new store (a lost
    machine) imports DIR and runs nothing again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path / "user-streams"))
    argv = ["sweep", "run", "quick", "--methods", "random", "--seeds", "0", "--name", "kept", "--obs", "proprio",
            "--render-quality", "fast", "--frames-per-task", "200", "--eval-every", "200", "--eval-episodes", "1",
            "--video-frames", "0", "--concurrency", "1", "--archive", str(tmp_path / "records")]
    for store, expect in (("one.db", "exported random seed 0"), ("two.db", "1 finished run(s) of")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store}")
        out = CliRunner().invoke(cli.main, argv)
        assert out.exit_code == 0 and expect in out.output, out.output
    assert "1 SKIPPED" in out.output, out.output
    assert len(list((tmp_path / "records").glob("*.json"))) == 1


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("experiment"), "names no experiment"),
    (lambda r: r["run"].update(status="RUNNING"), "status 'RUNNING' is not one of FINISHED"),
    (lambda r: r["run"].update(run_id="x' OR 1=1"), "is not a run id"),
    (lambda r: r["run"]["metrics"].update(bad=[[0, 0]]), "metric 'bad' is not a list of [step, timestamp, value]"),
    (lambda r: r["run"]["children"][0].update(params=[1]), "run.children[0]: params must map names to strings"),
])
def test_a_damaged_record_is_named_and_nothing_is_imported(finished_sweep, tmp_path, damage, message):
    uri_a, _ = finished_sweep
    files = export_runs(MlflowClient(uri_a), "arch", tmp_path / "records")
    rec = json.loads(files[-1].read_text())
    damage(rec)
    files[-1].write_text(json.dumps(rec))
    b = MlflowClient(f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(HarnessError, match=re.escape(message)):
        import_runs(b, [tmp_path / "records"])
    assert find_runs(b, "arch") == {}


def test_the_evidence_benchmark_refuses_a_generalist_its_recorded_runs_did_not_fine_tune(tmp_path, monkeypatch):
    """A generalist trained again on a new machine must be a model the committed GSA-family records used, or
    new runs would sit in one cell of the report beside runs of another model: refused, unless asked for; the
    refusal says whether the data differ and on which CPUs the recorded runs were made."""
    import torch

    from benchmarks import bench_gsa_evidence as ev
    from methods.backbone.checkpoint import save
    from methods.gsa.pretrain import DATA_DIGEST_TAG, WEIGHTS_DIGEST_TAG, generalist_tags, weights_digest
    pre = tmp_path / "pretrained-metaworld"
    save(pre / "world_model.pt", {"world_model": {"w": torch.arange(4.0)}})
    ours = weights_digest(pre)
    monkeypatch.setattr(ev, "ARCHIVE", tmp_path / "records")
    (tmp_path / "records").mkdir()

    def record(name: str, method: str, digest: str, **more: str) -> None:
        (tmp_path / "records" / f"{name}.json").write_text(json.dumps({"run": {"tags": {
            "tasks": "window-close-v3", "method": method, WEIGHTS_DIGEST_TAG: digest, **more}}}))

    record("a", "gsa", ours)
    record("b", "dreamer", "not-a-generalist")                         # no offline data: not checked
    assert ev.check_generalists({"metaworld": pre}, ["window-close-v3"], allow_new=False) == {"metaworld": ours}
    record("c", "gsa-p", "0" * 64, **{DATA_DIGEST_TAG: "d" * 64, "host.cpu": "Old CPU", "host.cpu_flags": "avx2"})
    # one of the recorded generalists (a task whose records already hold two): accepted
    assert ev.check_generalists({"metaworld": pre}, ["window-close-v3"], allow_new=False) == {"metaworld": ours}
    other = tmp_path / "pretrained-again"
    save(other / "world_model.pt", {"world_model": {"w": torch.arange(4.0) + 1e-6}})   # another CPU's rounding
    (other / "pretrain.json").write_text(json.dumps({"dataset_sha256": "d" * 64}))
    assert generalist_tags(other) == {WEIGHTS_DIGEST_TAG: weights_digest(other), DATA_DIGEST_TAG: "d" * 64}
    with pytest.raises(HarnessError, match=r"data sha256 dddddddddddd, CPU .*is none of those the recorded GSA-family "
                                           r"runs of window-close-v3 fine-tuned \(weights 000000000000, .*; data "
                                           r"dddddddddddd; CPU Old CPU \(avx2\);.*--new-generalist"):
        ev.check_generalists({"metaworld": other}, ["window-close-v3"], allow_new=False)
    assert ev.check_generalists({"metaworld": other}, ["window-close-v3"], allow_new=True) == \
        {"metaworld": weights_digest(other)}
    assert ev.check_generalists({"metaworld": pre}, ["walker-walk"], allow_new=False) == {"metaworld": ours}
