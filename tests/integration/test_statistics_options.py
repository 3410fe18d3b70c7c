"""components/statistics_options.py: StatisticsGen told that the image is bytes.

Real TFX StatisticsGen and SchemaGen executors (through the component's own
exec properties, the JSON a Kubeflow task also gets) on ImageExampleGen's
Examples of real emoji, with TFX's defaults and with the options.
"""

import math

import pytest

from benchmarks.statistics_gen import inferred_schema, statistics
from conftest import copy_subset, run_example_gen
from components import contracts

CLASSES = ["activities", "flags", "symbols"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory, emoji_root):
    root = tmp_path_factory.mktemp("stats-options")
    images = copy_subset(emoji_root, root / "images", CLASSES, 12)
    from tfx.types import artifact_utils, standard_artifacts
    a = standard_artifacts.Examples()
    a.uri = run_example_gen(images, root, CLASSES)
    a.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return a, root


@pytest.fixture(scope="module")
def both(examples):
    """StatisticsGen's statistics artifacts: (TFX's defaults, with the options)."""
    artifact, root = examples
    return (statistics(artifact, root / "default", declared=False)[1],
            statistics(artifact, root / "declared", declared=True)[1])


def _features(stats_artifact, split):
    import os
    import tensorflow_data_validation as tfdv
    stats = tfdv.load_stats_binary(os.path.join(stats_artifact.uri, f"Split-{split}", "FeatureStats.pb"))
    return stats.datasets[0].num_examples, {f.path.step[0]: f for f in stats.datasets[0].features}


def _without_float_sums(feature):
    """`feature` with its mean and standard deviation zeroed (their last bits depend on
    the order TFDV sums in), returned with them."""
    copy = type(feature)()
    copy.CopyFrom(feature)
    sums = (copy.num_stats.mean, copy.num_stats.std_dev)
    copy.num_stats.mean = copy.num_stats.std_dev = 0.0
    return copy, sums


def test_the_image_gets_bytes_statistics_and_the_rest_is_unchanged(both):
    default, declared = both
    for split in ("train", "eval"):
        n, before = _features(default, split)
        n_declared, after = _features(declared, split)
        assert n == n_declared > 0
        assert set(before) == set(after) == {contracts.IMAGE_KEY, *contracts.NON_INPUT_KEYS}
        # TFX's default sketches every image's bytes as a categorical string.
        assert before[contracts.IMAGE_KEY].HasField("string_stats")
        image = after[contracts.IMAGE_KEY]
        assert image.HasField("bytes_stats") and not image.HasField("string_stats")
        assert image.bytes_stats.common_stats.num_non_missing == n
        assert 0 < image.bytes_stats.min_num_bytes <= image.bytes_stats.max_num_bytes
        for name in contracts.NON_INPUT_KEYS:
            (a, sums_a), (b, sums_b) = _without_float_sums(before[name]), _without_float_sums(after[name])
            assert a == b, name
            assert all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(sums_a, sums_b)), name


def test_schema_gen_and_label_guard_read_the_same(both, tmp_path):
    from components.label_guard import class_counts_from_statistics
    default, declared = both
    schema = inferred_schema(declared, tmp_path / "schema-declared")
    assert schema == inferred_schema(default, tmp_path / "schema-default")
    assert f'name: "{contracts.IMAGE_KEY}"' in schema.decode()
    counts = class_counts_from_statistics(declared.uri, ["train", "eval"])
    assert counts == class_counts_from_statistics(default.uri, ["train", "eval"])
    assert set(counts) == set(CLASSES) and sum(counts.values()) == 36


def _label_examples(folder, classes: int, per_class: int):
    """An Examples artifact of `classes` x `per_class` tf.Examples holding only the label
    fields, in one gzipped train split as ExampleGen writes it."""
    import tensorflow as tf
    from tfx.types import artifact_utils, standard_artifacts
    split = folder / "Split-train"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), "GZIP") as w:
        for i in range(classes * per_class):
            example = tf.train.Example()
            example.features.feature[contracts.LABEL_NAME_KEY].bytes_list.value.append(
                f"class_{i % classes:04d}".encode())
            example.features.feature[contracts.LABEL_KEY].int64_list.value.append(i % classes)
            w.write(example.SerializeToString())
    a = standard_artifacts.Examples()
    a.uri = str(folder)
    a.split_names = artifact_utils.encode_split_names(["train"])
    return a


def test_label_guard_counts_every_class_beyond_tfdvs_default_histogram(tmp_path):
    """TFDV keeps 1,000 values of a rank histogram by default: with 1,050 classes the
    rarest 50 had no count, and LabelGuard took them for gone. The pipeline's options
    size the histogram to the classes; a histogram that is short says so."""
    from components.label_guard import IncompleteClassCounts, class_counts_from_statistics
    classes = 1050
    examples = _label_examples(tmp_path / "examples", classes, per_class=2)
    _, sized = statistics(examples, tmp_path / "sized", declared=True, classes=classes)
    counts = class_counts_from_statistics(sized.uri, ["train"])
    assert len(counts) == classes and set(counts.values()) == {2}
    _, default = statistics(examples, tmp_path / "default", declared=False)
    with pytest.raises(IncompleteClassCounts, match="count 1000 of its 1050 classes"):
        class_counts_from_statistics(default.uri, ["train"])
