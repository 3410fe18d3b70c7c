"""components.progress_counts: the counts behind `retrain run`'s live bars."""

import os

from components import progress_counts


def test_no_op_without_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(progress_counts.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    progress_counts.set_total("BottleneckGen", 10, "images embedded")
    counter = progress_counts.Counter("BottleneckGen")
    counter.add(3)
    counter.close()
    assert os.listdir(tmp_path) == []
    assert progress_counts.read(str(tmp_path / "nothing")) == {}


class _Clock:
    """A clock the test moves by hand, so throttling never depends on the machine's load."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_workers_add_up_against_the_total(tmp_path, monkeypatch):
    monkeypatch.setenv(progress_counts.ENV, str(tmp_path))
    clock = _Clock()
    progress_counts.set_total("BottleneckGen", 100, "images embedded")
    a = progress_counts.Counter("BottleneckGen", interval=0.5, clock=clock)
    b = progress_counts.Counter("BottleneckGen", interval=0.5, clock=clock)
    a.add(64)   # first add writes at once
    b.add(5)
    clock.now += 0.4
    b.add(6)    # within the interval: not written yet...
    assert progress_counts.read(str(tmp_path))["BottleneckGen"]["done"] == 69
    b.close()   # ...but always on close
    assert progress_counts.read(str(tmp_path)) == {
        "BottleneckGen": {"done": 75, "total": 100, "unit": "images embedded"}}


def test_throttle_writes_once_the_interval_has_passed(tmp_path, monkeypatch):
    monkeypatch.setenv(progress_counts.ENV, str(tmp_path))
    clock = _Clock()
    counter = progress_counts.Counter("Trainer", interval=10.0, clock=clock)
    seen = []
    for step in (0.0, 4.0, 5.5, 0.5, 9.75, 0.25):   # seconds since the previous add (exact floats)
        clock.now += step
        counter.add()
        seen.append(progress_counts.read(str(tmp_path))["Trainer"]["done"])
    # Written at t=0 (first add), at t=10 (the interval reached exactly, 4 counted), skipped
    # at t=19.75 (9.75 s after that write), written again at t=20 (6 counted).
    assert seen == [1, 1, 1, 4, 4, 6]


def test_count_without_total_and_unsafe_stage_names(tmp_path, monkeypatch):
    monkeypatch.setenv(progress_counts.ENV, str(tmp_path / "run"))
    counter = progress_counts.Counter("Trainer", interval=0.0)
    counter.add()
    counter.add()
    for bad in ("../escape", "a/b", ""):
        progress_counts.set_total(bad, 1, "x")
        progress_counts.Counter(bad).add()
    assert progress_counts.read(str(tmp_path / "run")) == {
        "Trainer": {"done": 2, "total": None, "unit": ""}}
    assert sorted(os.listdir(tmp_path)) == ["run"]
