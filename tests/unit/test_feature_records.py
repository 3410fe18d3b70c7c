"""The hand-written records BottleneckGen writes (components/feature_records.py):
the feature-cache record and the bottleneck tf.Example, checked against
TensorFlow's own parser. No weights, no pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from components import bottleneck_gen, contracts, feature_records


def test_cache_records_round_trip_and_bad_records_are_named():
    vec = np.linspace(-3.0, 3.0, 1024, dtype=np.float32)
    key = bottleneck_gen.entry_key("ns", "ab" * 32, 0)
    record = feature_records.cache_record(key, vec.astype("<f4").tobytes())
    got_key, got = feature_records.parse_cache_record(record)
    assert got_key == key
    np.testing.assert_array_equal(np.frombuffer(got, "<f4"), vec)
    for bad in (key, key + b"\x00\x01\x02"):  # no features; a partial float
        with pytest.raises(ValueError, match="malformed feature-cache record"):
            feature_records.parse_cache_record(bad)


@pytest.mark.parametrize("label,view,dim", [(0, 0, 1024), (1, 2, 1280), (300, 129, 2048), (2**40, 0, 1)])
def test_hand_serialised_bottleneck_is_the_tf_example(label, view, dim):
    """Multi-byte varints and lengths included: it must parse as tf.train.Example
    builds it, so Transform and the Trainer read the same values."""
    vec = np.random.default_rng(label).standard_normal(dim).astype(np.float32)
    sha = "0f" * 32
    data = feature_records.bottleneck_example({"label": label, "sha": sha, "view": view},
                                              vec.astype("<f4").tobytes())
    expected = tf.train.Example(features=tf.train.Features(feature={
        contracts.FEATURES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=vec)),
        contracts.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        contracts.CONTENT_SHA256_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[sha.encode()])),
        "view": tf.train.Feature(int64_list=tf.train.Int64List(value=[view]))}))
    assert tf.train.Example.FromString(data) == expected
    parsed = tf.io.parse_single_example(data, {
        contracts.FEATURES_KEY: tf.io.FixedLenFeature([dim], tf.float32),
        contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)})
    np.testing.assert_array_equal(parsed[contracts.FEATURES_KEY].numpy(), vec)
    assert int(parsed[contracts.LABEL_KEY]) == label
