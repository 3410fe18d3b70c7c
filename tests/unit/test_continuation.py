"""components/continuation.py: when a fine-tuning rerun continues the served model, and
for how many epochs (no TensorFlow model: head.json dicts and row files on disk)."""

import json

import numpy as np
import pytest

from components import contracts, continuation

SETTINGS = json.dumps({"backbone": "mobilenet_v1", "epochs": 10, "trainable_blocks": 1}, sort_keys=True)
NAMESPACE = "mobilenet_v1|imagenet|cut=conv_dw_13|float16"


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return continuation.row_digests(rng.random((n, 4)).astype(np.float32), rng.integers(0, 3, n))


def _served(tmp_path, rows, settings=SETTINGS, namespace=NAMESPACE):
    (tmp_path / contracts.HEAD_DIR).mkdir(parents=True, exist_ok=True)
    continuation.write_rows(str(tmp_path), rows)
    return str(tmp_path), {"training": {"data": "x", "settings": settings}, "feature_namespace": namespace}


def test_new_rows_are_those_the_served_model_did_not_train_on(tmp_path):
    old = _rows(90)
    uri, info = _served(tmp_path, old)
    now = sorted(old[:85] + _rows(15, seed=1))  # 5 removed, 15 added
    plan = continuation.plan(uri, info, SETTINGS, NAMESPACE, now, epochs=10, cold_start=False)
    assert plan.warm and plan.source == uri and (plan.new_rows, plan.rows) == (15, 100)
    assert plan.epochs == 2 and "15 of 100 train rows new" in plan.reason
    # Relabelling an image makes its row new.
    x = np.ones((3, 4), np.float32)
    assert continuation.row_digests(x, np.array([0, 1, 2])) != continuation.row_digests(x, np.array([0, 1, 1]))


@pytest.mark.parametrize("new, rows, epochs, expected", [
    (10, 100, 10, 2),    # a tenth of 10 epochs is 1: the floor is MIN_EPOCHS
    (50, 100, 10, 5),
    (99, 100, 10, 10),   # rounded up
    (0, 100, 10, 2),     # nothing new (a --force rerun): still the floor
    (10, 100, 1, 1),     # never more than the run's epochs
    (100, 100, 15, 15),
])
def test_epochs_are_the_new_rows_share(new, rows, epochs, expected):
    assert continuation.warm_epochs(epochs, new, rows) == expected


def test_a_cold_start_and_why(tmp_path):
    uri, info = _served(tmp_path, _rows(10))
    rows = _rows(12)
    cases = {
        "--cold-start": continuation.plan(uri, info, SETTINGS, NAMESPACE, rows, 10, cold_start=True),
        "no served model": continuation.plan(None, None, SETTINGS, NAMESPACE, rows, 10, False),
        "other settings": continuation.plan(uri, info, SETTINGS.replace("10", "11"), NAMESPACE, rows, 10, False),
        "another backbone, weights or cut": continuation.plan(uri, info, SETTINGS, NAMESPACE + "x", rows, 10, False),
        "no settings recorded": continuation.plan(uri, {"feature_namespace": NAMESPACE}, SETTINGS, NAMESPACE,
                                                  rows, 10, False),
    }
    for why, plan in cases.items():
        assert not plan.warm and plan.epochs == 0, (why, plan)
        assert "ImageNet weights" in plan.reason, plan.reason
    assert "other settings" in cases["other settings"].reason
    assert "--cold-start" in cases["--cold-start"].reason


def test_a_cold_start_run_is_continued_by_the_next(tmp_path):
    """cold_start says how a run starts, not what it trains: it is left out of the comparison."""
    cold = json.dumps(dict(json.loads(SETTINGS), cold_start=True), sort_keys=True)
    uri, info = _served(tmp_path, _rows(10), settings=cold)
    assert continuation.plan(uri, info, SETTINGS, NAMESPACE, _rows(10), 10, False).warm


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "oversized"])
def test_a_missing_or_damaged_rows_file_means_a_cold_start(tmp_path, damage, monkeypatch):
    uri, info = _served(tmp_path, _rows(10))
    path = tmp_path / contracts.HEAD_DIR / contracts.TRAIN_ROWS_FILE
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    else:
        monkeypatch.setattr(continuation, "MAX_ROWS_FILE_BYTES", 64)
    assert continuation.read_rows(uri) is None
    plan = continuation.plan(uri, info, SETTINGS, NAMESPACE, _rows(10), 10, False)
    assert not plan.warm and contracts.TRAIN_ROWS_FILE in plan.reason


def test_the_report_line(tmp_path):
    uri, info = _served(tmp_path, _rows(10))
    plan = continuation.plan(uri, info, SETTINGS, NAMESPACE, _rows(10) + _rows(2, seed=5), 10, False)
    line = continuation.describe(plan.to_json())
    assert line.startswith("continued from the served model: 2 of 12 train rows new")
    assert "2 epochs at 0.1 x the step sizes" in line
    one = dict(plan.to_json(), epochs=1)
    assert continuation.describe(one).endswith("; 1 epoch at 0.1 x the step sizes")
    assert continuation.describe(continuation.Plan(None, "no served model").to_json()) == "no served model"
    assert continuation.describe({"reason": 3}) is None and continuation.describe(None) is None


def test_in_digest_order_is_the_same_for_any_order_of_the_rows():
    rng = np.random.default_rng(4)
    x, y = rng.random((50, 4)).astype(np.float32), rng.integers(0, 3, 50)
    perm = rng.permutation(50)
    xa, ya, da = continuation.in_digest_order(x, y)
    xb, yb, db = continuation.in_digest_order(x[perm], y[perm])
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert da == db == continuation.row_digests(x, y)  # the sorted digests, as before

