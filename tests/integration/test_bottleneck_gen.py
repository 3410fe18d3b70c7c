"""BottleneckGen's feature cache: hits, misses, invalidation, augmented views.

Real components under LocalDagRunner (ExampleGen -> resolver -> BottleneckGen)
with real MobileNet v1 weights, in one MLMD store so the resolver sees earlier
runs' caches, as it does across scheduled retraining runs.
"""

import glob
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components import backbones, bottleneck_gen, preprocessing, trainer
from components.backbones import weights as backbone_weights
from components.bottleneck_gen import BottleneckGen, FeatureCache
from components.image_example_gen import ImageExampleGen
from conftest import head_settings, png_bytes

pytestmark = pytest.mark.slow


def _run(images, workdir, weights="imagenet", augment_views=0):
    gen = ImageExampleGen(images=str(images), label_names=["ant", "bee"], eval_percent=30,
                          exclude_label_conflicts=True)
    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        cache=tfx.dsl.Channel(type=FeatureCache)).with_id("cache_resolver")
    bottlenecks = BottleneckGen(examples=gen.outputs["examples"],
                                previous_cache=resolver.outputs["cache"],
                                backbone="mobilenet_v1", weights=weights, batch_size=4,
                                augment_views=augment_views)
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="bottleneck-test", pipeline_root=str(workdir / "root"),
        components=[gen, resolver, bottlenecks], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite"))))
    uri = sorted(glob.glob(str(workdir / "root" / "BottleneckGen" / "bottlenecks" / "*")),
                 key=lambda p: int(os.path.basename(p)))[-1]
    return _read(uri)


def _read(uri):
    """{'counts': {...}, split: {(sha, view): (label, features)}}; counts from MLMD props."""
    out = {}
    for split in ("train", "eval"):
        rows = {}
        for rec in tf.data.TFRecordDataset(glob.glob(os.path.join(uri, f"Split-{split}", "*.gz")),
                                           compression_type="GZIP"):
            f = tf.train.Example.FromString(rec.numpy()).features.feature
            key = (f["content_sha256"].bytes_list.value[0].decode(), f["view"].int64_list.value[0])
            rows[key] = (f["label"].int64_list.value[0], np.array(f["features"].float_list.value))
        out[split] = rows
    return out


def _counts(workdir):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(workdir / "mlmd.sqlite")
    store = metadata_store.MetadataStore(cfg)
    latest = max((a for a in store.get_artifacts_by_type("Examples")
                  if "computed" in a.custom_properties), key=lambda a: a.id)
    return {k: latest.custom_properties[k].int_value for k in ("computed", "cache_hits", "reused_cache")}


def _images(root, n_per_class, offset=0):
    for label, base in (("ant", 0), ("bee", 1000)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(offset, offset + n_per_class):
            (root / label / f"{i}.png").write_bytes(png_bytes(base + i, size=(40, 30)))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, imagenet_weights):
    root = tmp_path_factory.mktemp("bottlenecks")
    work = root / "work"
    images = _images(root / "images", 8)
    out = {"first": _run(images, work)}
    out["first_counts"] = _counts(work)
    _images(images, 1, offset=8)  # one new image per class
    out["second"] = _run(images, work)
    out["second_counts"] = _counts(work)
    out["images"] = images
    out["work"] = work
    return out


def _all(rows):
    return {**rows["train"], **rows["eval"]}


def test_first_run_computes_every_image_like_the_transform_graph(runs):
    first = _all(runs["first"])
    assert runs["first_counts"] == {"computed": 16, "cache_hits": 0, "reused_cache": 0}
    assert len(first) == 16 and all(view == 0 for _, view in first)
    files = sorted(runs["images"].glob("*/[0-7].png"))
    by_sha = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in files}
    shas = sorted(by_sha)
    pixels = preprocessing.decode_and_resize(tf.constant([by_sha[s].read_bytes() for s in shas]), 224)
    direct = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(pixels).numpy()
    for sha, vec in zip(shas, direct):
        label, cached = first[(sha, 0)]
        assert label == (0 if by_sha[sha].parent.name == "ant" else 1)
        np.testing.assert_allclose(cached, vec, atol=1e-4)


def test_rerun_computes_only_new_images(runs):
    first, second = _all(runs["first"]), _all(runs["second"])
    assert runs["second_counts"] == {"computed": 2, "cache_hits": 16, "reused_cache": 1}
    assert len(second) == 18 and set(first) <= set(second)
    for key in first:
        np.testing.assert_array_equal(first[key][1], second[key][1])
    # each run's artifacts hold only their final files: no temp folder, no stray parts
    for cache in glob.glob(str(runs["work"] / "root" / "BottleneckGen" / "feature_cache" / "*")):
        assert [n for n in os.listdir(cache) if not n.startswith("features-")] == []
    for split in glob.glob(str(runs["work"] / "root" / "BottleneckGen" / "bottlenecks" / "*" / "*")):
        assert all(n.startswith("bottlenecks-") and n.endswith(".gz") for n in os.listdir(split))


def test_head_from_cache_equals_head_from_scratch(runs, monkeypatch):
    # A preprocessing change invalidates the cache: everything is recomputed,
    # which also gives the from-scratch features to compare against.
    monkeypatch.setattr(preprocessing, "PREPROCESSING_VERSION", 999)
    fresh = _run(runs["images"], runs["work"])
    assert _counts(runs["work"]) == {"computed": 18, "cache_hits": 0, "reused_cache": 0}
    cached = runs["second"]

    def xy(rows):
        keys = sorted(rows)
        return (np.stack([rows[k][1] for k in keys]).astype(np.float32),
                np.array([rows[k][0] for k in keys]))

    cfg = head_settings(epochs=20, seed=3)
    head_a, _ = trainer.train_head(*xy(cached["train"]), *xy(cached["eval"]), 2, cfg)
    head_b, _ = trainer.train_head(*xy(fresh["train"]), *xy(fresh["eval"]), 2, cfg)
    for a, b in zip(head_a.get_weights(), head_b.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_other_weights_invalidate_and_views_are_cached(runs, tmp_path):
    path = tmp_path / "other.h5"
    backbones.get_spec("mobilenet_v1").application(include_top=True).save_weights(str(path))  # random
    _run(runs["images"], runs["work"], weights=str(path))
    assert _counts(runs["work"])["reused_cache"] == 0
    assert _counts(runs["work"])["computed"] == 18

    # The latest cache now belongs to the other weights: nothing to reuse.
    views = _run(runs["images"], runs["work"], augment_views=2)
    n_train = len({sha for sha, _ in views["train"]})
    assert len(views["train"]) == 3 * n_train and all(v == 0 for _, v in views["eval"])
    assert _counts(runs["work"]) == {"computed": len(_all(views)), "cache_hits": 0,
                                     "reused_cache": 0}
    sha = next(iter({s for s, _ in views["train"]}))
    v0, v1, v2 = (views["train"][(sha, v)][1] for v in range(3))
    assert not np.allclose(v0, v1) and not np.allclose(v1, v2)
    again = _run(runs["images"], runs["work"], augment_views=2)
    assert _counts(runs["work"]) == {"computed": 0, "cache_hits": len(_all(again)), "reused_cache": 1}
    for key, (_, vec) in again["train"].items():
        np.testing.assert_array_equal(vec, views["train"][key][1])


def test_cache_namespace_names_the_record_format(monkeypatch):
    """A cache written in another record layout is never reused, so never misparsed."""
    before = bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet")
    monkeypatch.setattr(bottleneck_gen, "CACHE_FORMAT_VERSION", bottleneck_gen.CACHE_FORMAT_VERSION + 1)
    assert bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet") != before


def test_keras_weights_are_downloaded_on_first_use_then_keyed(tmp_path, monkeypatch):
    """weights="keras" (the online path): the first cache key downloads Keras' file
    instead of failing, later ones reuse it. The download is simulated (no network
    here) by writing the file where Keras' get_file would."""
    monkeypatch.setattr(backbone_weights, "keras_cache_dirs", lambda: [tmp_path])
    spec = backbones.get_spec("mobilenet_v2")
    downloads = []

    def download(spec, include_top):  # as Keras' get_file: fetch unless cached, then load
        path = tmp_path / spec.keras.notop_file
        if not path.exists():
            downloads.append((spec.name, include_top))
            spec.application(include_top=include_top).save_weights(str(path))
        app = spec.application(include_top=include_top)
        app.load_weights(str(path))
        return app

    monkeypatch.setattr(backbone_weights, "keras_download", download)
    with pytest.raises(backbones.BackboneWeightsError, match="not downloaded yet"):
        backbones.weights_fingerprint("mobilenet_v2", "keras")  # itself never downloads
    namespace = bottleneck_gen.cache_namespace("mobilenet_v2", "keras")
    assert downloads == [("mobilenet_v2", False)]
    sha = hashlib.sha256((tmp_path / spec.keras.notop_file).read_bytes()).hexdigest()
    assert namespace.startswith(f"mobilenet_v2|{sha}|")
    assert bottleneck_gen.cache_namespace("mobilenet_v2", "keras") == namespace
    extractor = preprocessing.shared_extractor("mobilenet_v2", "keras")
    assert extractor.output_shape == (None, spec.feature_dim)  # the downloaded no-top model
    assert len(downloads) == 1
