"""BottleneckGen with `--trainable-blocks N` (issue 19): the cut activation is cached,
keyed as head-only features plus the cut, so a change of N misses the cache, N = 0
keys are unchanged, and augmented views are cached too.

Real components under LocalDagRunner (ImageExampleGen -> resolver -> BottleneckGen),
real MobileNet v1 weights, 2 classes x 5 tiny PNGs.
"""

import glob
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components import backbones, bottleneck_gen, feature_records, fine_tune, preprocessing
from components.bottleneck_gen import BottleneckGen, FeatureCache
from components.image_example_gen import ImageExampleGen
from conftest import png_bytes

pytestmark = pytest.mark.slow


def _run(images, workdir, blocks, dtype="float16", augment_views=0):
    gen = ImageExampleGen(images=str(images), label_names=["ant", "bee"], eval_percent=30,
                          exclude_label_conflicts=True)
    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        cache=tfx.dsl.Channel(type=FeatureCache)).with_id("cache_resolver")
    node = BottleneckGen(examples=gen.outputs["examples"], previous_cache=resolver.outputs["cache"],
                         backbone="mobilenet_v1", weights="imagenet", batch_size=4,
                         augment_views=augment_views, trainable_blocks=blocks, activation_dtype=dtype)
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="fine-tune-cache", pipeline_root=str(workdir / "root"),
        components=[gen, resolver, node], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite"))))
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(workdir / "mlmd.sqlite")
    latest = max((a for a in metadata_store.MetadataStore(cfg).get_artifacts_by_type("Examples")
                  if "computed" in a.custom_properties), key=lambda a: a.id)
    props = {k: latest.custom_properties[k].int_value for k in ("computed", "cache_hits", "reused_cache")}
    rows = {}
    for rec in tf.data.TFRecordDataset(glob.glob(os.path.join(latest.uri, "Split-*", "*.gz")), "GZIP"):
        f = tf.train.Example.FromString(rec.numpy()).features.feature
        rows[(f["content_sha256"].bytes_list.value[0].decode(), f["view"].int64_list.value[0])] = \
            np.array(f["features"].float_list.value, np.float32)
    return props, latest.custom_properties["namespace"].string_value, rows


def test_namespace_of_n0_is_unchanged_and_n_and_dtype_are_in_the_key(imagenet_weights):
    fingerprint = backbones.weights_fingerprint("mobilenet_v1", "imagenet")
    head_only = (f"mobilenet_v1|{fingerprint}|p{preprocessing.PREPROCESSING_VERSION}"
                 f"|c{bottleneck_gen.CACHE_FORMAT_VERSION}")  # the key format before issue 19
    assert bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet") == head_only
    assert bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet", 0, "float32") == head_only
    keys = {bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet", n, d)
            for n in (1, 2) for d in ("float16", "float32")}
    assert len(keys) == 4 and all(k.startswith(head_only + "|cut=") for k in keys)
    assert feature_records.cache_dtype("float16", 0) == "<f4"  # N = 0 records stay float32


def test_cut_activations_are_cached_and_a_change_of_n_misses(tmp_path, imagenet_weights):
    images = tmp_path / "images"
    for label, base in (("ant", 0), ("bee", 1000)):
        (images / label).mkdir(parents=True)
        for i in range(5):
            (images / label / f"{i}.png").write_bytes(png_bytes(base + i, size=(40, 30)))
    work = tmp_path / "work"

    props, ns1, first = _run(images, work, blocks=1, augment_views=1)
    n_train = sum(1 for _, view in first if view == 1)
    assert props == {"computed": 10 + n_train, "cache_hits": 0, "reused_cache": 0}
    assert ns1.endswith("|cut=conv_dw_13|float16")
    # The records hold the lower part's activation at the cut, float16-rounded as
    # cached, as float32: what the Transform graph computes for the serving model.
    files = sorted(images.glob("*/*.png"))
    by_sha = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in files}
    shas = sorted(by_sha)
    pixels = preprocessing.decode_and_resize(tf.constant([by_sha[s].read_bytes() for s in shas]), 224)
    lower = preprocessing.shared_extractor("mobilenet_v1", "imagenet", 1)
    direct = fine_tune.round_activation(lower(pixels), "float16").numpy()
    assert direct.shape == (10, 7 * 7 * 1024)
    for sha, vec in zip(shas, direct):
        np.testing.assert_allclose(first[(sha, 0)], vec, atol=6 * 2 ** -10)  # one float16 step at 6
    sha = next(s for s, view in first if view == 1)
    assert not np.allclose(first[(sha, 0)], first[(sha, 1)])  # the augmented view's activation

    props, ns2, second = _run(images, work, blocks=2)  # another cut: nothing reused
    assert ns2 != ns1 and props == {"computed": 10, "cache_hits": 0, "reused_cache": 0}
    assert len(next(iter(second.values()))) == 14 * 14 * 512

    (images / "ant" / "new.png").write_bytes(png_bytes(77, size=(40, 30)))
    props, ns3, third = _run(images, work, blocks=2)  # same cut: only the new image computed
    assert ns3 == ns2 and props == {"computed": 1, "cache_hits": 10, "reused_cache": 1}
    for key, vec in second.items():
        np.testing.assert_array_equal(third[key], vec)
