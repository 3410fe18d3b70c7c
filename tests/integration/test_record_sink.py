"""record_sink: files committed by renaming, retries, empty outputs, and the stored-gzip level."""

import glob
import gzip
import os

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
import numpy as np
import tensorflow as tf

from components import record_sink


def _sink(tmp_path, compression=record_sink.GZIP_STORED):
    return record_sink.Sink(str(tmp_path / "out" / ".writing"), {
        "train": record_sink.Output(str(tmp_path / "out" / "Split-train" / "data"), ".gz", compression),
        "eval": record_sink.Output(str(tmp_path / "out" / "Split-eval" / "data"), ".gz", compression)})


def _read(pattern):
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern)), "GZIP"))


def test_outputs_are_cleared_then_committed_and_never_left_without_a_file(tmp_path):
    sink = _sink(tmp_path, ("GZIP", 1))
    stale = tmp_path / "out" / "Split-train" / "data-00002-of-00003.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier attempt's file")
    sink.clear()
    assert not stale.exists()
    bundles = []
    for i in range(2):  # two committed bundles of train records
        writer = sink.writer(lambda record: [("train", record)])
        writer.setup()
        writer.start_bundle()
        writer.process(f"row{i}".encode())
        (done,) = list(writer.finish_bundle())
        bundles.append(done.value)
    (tmp_path / "out" / ".writing" / "train-failed-attempt").write_bytes(b"partial")  # never committed
    sink.commit(bundles)
    sink.commit(bundles)  # a retried commit changes nothing
    sink.finish()
    assert not (tmp_path / "out" / ".writing").exists()
    assert sorted(os.listdir(tmp_path / "out" / "Split-train")) == ["data-00000-of-00002.gz", "data-00001-of-00002.gz"]
    assert _read(str(tmp_path / "out" / "Split-train" / "*")) == [b"row0", b"row1"]
    # eval got no records: one empty, readable file, as Beam's sinks leave
    (empty,) = glob.glob(str(tmp_path / "out" / "Split-eval" / "*.gz"))
    assert _read(empty) == []


def test_a_beam_pipeline_writes_stored_gzip_that_beam_and_gzip_read(tmp_path):
    """Level 0: valid gzip (Python's gzip, tf.data and Beam's ReadFromTFRecord read it),
    no smaller than the records, since nothing is compressed."""
    sink = _sink(tmp_path)
    sink.clear()
    records = [np.random.default_rng(i).bytes(20_000) for i in range(30)]  # incompressible, as JPEG bytes
    with beam.Pipeline() as p:
        written = p | beam.Create(list(enumerate(records))) | beam.ParDo(
            sink.writer(lambda item: [("train" if item[0] % 3 else "eval", item[1])]))
        sink.commit_after([written])
    sink.finish()
    train, evals = str(tmp_path / "out" / "Split-train" / "*"), str(tmp_path / "out" / "Split-eval" / "*")
    assert sorted(_read(train) + _read(evals)) == sorted(records)
    expected = [r for i, r in enumerate(records) if i % 3]
    stored = 0
    for path in glob.glob(train):
        with gzip.open(path, "rb") as f:
            f.read()  # a valid gzip stream to its end
        stored += os.path.getsize(path)
    assert stored >= sum(map(len, expected))  # level 0: stored, not compressed
    with beam.Pipeline() as p:
        got = p | beam.io.ReadFromTFRecord(train)  # compression from the .gz suffix, as TFX reads
        assert_that(got, equal_to(expected))
