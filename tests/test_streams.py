import pytest

from harness.errors import HarnessError
from harness.registry import Registry
from harness.streams import STREAMS, StreamSpec, TaskSpec, add_stream_file, get_stream, parse_stream_toml, stream
from tasks.catalog import TASKS

GOOD = """
name = "my-stream"
description = "two quadruped tasks"
[eval]
every_frames = 5000
episodes = 3
[[tasks]]
name = "quadruped-stand"
frames = 300000
[[tasks]]
name = "quadruped-walk"
frames = 300000
[[tasks]]
name = "quadruped-stand"
frames = 1000
"""


def test_builtin_streams_reference_registered_tasks():
    for entry in STREAMS:
        spec = get_stream(entry.name)
        for t in spec.tasks:
            assert t.name in TASKS, f"stream {entry.name}: unknown task {t.name}"
            assert t.frames > 0


def test_paper_streams_match_the_spec():
    ant = get_stream("ant")
    assert ant.task_names() == [f"quadruped-{t}" for t in ("stand", "walk", "run", "jump", "roll", "roll_fast")]
    assert {t.frames for t in ant.tasks} == {300_000}
    cw10 = get_stream("cw10")
    assert cw10.task_names()[:3] == ["hammer-v3", "push-wall-v3", "faucet-close-v3"]
    assert len(cw10.tasks) == 10 and {t.frames for t in cw10.tasks} == {1_000_000}
    cw20 = get_stream("cw20")
    assert cw20.task_names() == cw10.task_names() * 2


def test_parse_good_file_allows_repeated_tasks():
    spec = parse_stream_toml(GOOD, "f.toml")
    assert spec.name == "my-stream"
    assert spec.task_names() == ["quadruped-stand", "quadruped-walk", "quadruped-stand"]
    assert spec.eval.every_frames == 5000 and spec.eval.episodes == 3
    assert spec.total_frames == 601_000


@pytest.mark.parametrize("text, match", [
    ("name = 'x'\n[[tasks]]\nname = 'quadruped-stand'\nframes = 10\ncolour = 1\n", r"f.toml:5: tasks\[0\]: unknown key 'colour'"),
    ("name = 'x'\nbudget = 3\n[[tasks]]\nname='quadruped-stand'\nframes=1\n", r"f.toml:2: unknown key 'budget'"),
    ("name = 'x'\n[[tasks]]\nname = 'quadruped-stand'\nframes = -5\n", r"f.toml:4: tasks\[0\].frames must be a positive integer"),
    ("name = 'x'\n[[tasks]]\nname = 'quadruped-stand'\nframes = 10\n[[tasks]]\nname = 'quadruped-fly'\nframes = 10\n",
     r"f.toml:6: tasks\[1\].name: unknown task 'quadruped-fly'.*quadruped-walk"),
    ("name = 'x'\n[[tasks]]\nname = 'quadruped-stand'\n", r"tasks\[0\]: missing key 'frames'"),
    ("name = 'x'\n", r"at least one \[\[tasks\]\]"),
    ("name = 'x'\n[[tasks]\n", r"f.toml: invalid TOML"),
    ("name = 'x'\n[eval]\nevery_frames = 0\n[[tasks]]\nname='quadruped-stand'\nframes=1\n", r"f.toml:3: eval.every_frames"),
    ("name = 'bad name!'\n[[tasks]]\nname='quadruped-stand'\nframes=1\n", r"f.toml:1: 'name' must be"),
])
def test_bad_files_name_field_and_line(text, match):
    with pytest.raises(HarnessError, match=match):
        parse_stream_toml(text, "f.toml")


def test_stream_file_is_data_not_code(tmp_path):
    # TOML cannot execute anything; a python-looking value is just a string and fails validation.
    with pytest.raises(HarnessError, match="unknown task"):
        parse_stream_toml("name='x'\n[[tasks]]\nname=\"__import__('os').system('false')\"\nframes=1\n", "f")


def test_add_stream_file_and_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path / "streams"))
    f = tmp_path / "mine.toml"
    f.write_text(GOOD)
    spec, dest = add_stream_file(f)
    assert dest.exists() and get_stream("my-stream").task_names() == spec.task_names()
    with pytest.raises(HarnessError, match="already exists"):
        add_stream_file(f)
    add_stream_file(f, force=True)
    f.write_text(GOOD.replace("my-stream", "ant"))
    with pytest.raises(HarnessError, match="taken by a built-in stream"):
        add_stream_file(f)


def test_unknown_stream_lists_valid_names(monkeypatch, tmp_path):
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path))
    with pytest.raises(HarnessError, match="unknown stream 'nope'.*ant.*cw10"):
        get_stream("nope")


def test_python_decorator_registers_a_stream():
    @stream("decorated-test-stream", "from code")
    def _make() -> StreamSpec:
        return StreamSpec("decorated-test-stream", (TaskSpec("cartpole-balance", 1000),))
    try:
        assert get_stream("decorated-test-stream").task_names() == ["cartpole-balance"]
    finally:
        STREAMS.unregister("decorated-test-stream")


def test_overrides_are_validated():
    spec = get_stream("ant").with_overrides(frames_per_task=1000, eval_every=500, eval_episodes=1)
    assert {t.frames for t in spec.tasks} == {1000} and spec.eval.every_frames == 500
    with pytest.raises(HarnessError, match="--frames-per-task must be a positive integer"):
        get_stream("ant").with_overrides(frames_per_task=-1)


def test_registry_errors_are_clear():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(HarnessError, match="duplicate widget 'alpha'"):
        reg.register("alpha", 2)
    with pytest.raises(KeyError, match="unknown widget 'alph'.*Did you mean 'alpha'.*Valid widgets: alpha"):
        reg.get("alph")


def test_multitask_streams_take_overrides_as_their_base_streams(tmp_path, monkeypatch):
    """`<name>-mt` exists for any stream, user files included, and `--frames-per-task F` gives each task F
    frames in all (chunked), so the reference matches the continual runs' budget per task."""
    from harness.streams import MULTITASK_ROUNDS, stream_with_overrides

    mt = stream_with_overrides("cl3-short-mt", frames_per_task=10_000)
    per_task: dict[str, int] = {}
    for t in mt.tasks:
        per_task[t.name] = per_task.get(t.name, 0) + t.frames
    assert per_task == {"cartpole-balance": 10_000, "cartpole-swingup": 10_000, "walker-stand": 10_000}
    assert len(mt.tasks) == 3 * MULTITASK_ROUNDS and mt.name == "cl3-short-mt"
    assert stream_with_overrides("cl3-short-mt") == get_stream("cl3-short-mt")
    monkeypatch.setenv("GSA_STREAMS_DIR", str(tmp_path))
    (tmp_path / "mine.toml").write_text('name = "mine"\n[[tasks]]\nname = "cartpole-balance"\nframes = 500\n'
                                        '[[tasks]]\nname = "walker-stand"\nframes = 1000\n')
    mine = stream_with_overrides("mine-mt", eval_episodes=2)
    assert mine.name == "mine-mt" and mine.eval.episodes == 2 and mine.total_frames == 1500
    with pytest.raises(HarnessError, match="unknown stream 'nothing-mt'"):
        stream_with_overrides("nothing-mt")
