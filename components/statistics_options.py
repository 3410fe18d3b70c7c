"""What StatisticsGen is told about the Examples before it reads them.

Without a schema, TFDV takes the encoded image (``contracts.IMAGE_KEY``, bytes) for
a categorical string: every run sketched each image's bytes for top-k and distinct
counts (tensorflow_data_validation/statistics/generators/
top_k_uniques_sketch_stats_generator.py ``_should_run``).  A schema that gives the
image TFDV's ``image_domain`` makes it a bytes feature (schema_util
``get_bytes_features``): it gets ``bytes_stats`` (count, presence, sizes) and no
sketch.  Measured on 660 1920 x 1280 JPEGs (360 MB of Examples): 13.0 s -> 6.3 s
per StatisticsGen (benchmarks/statistics_gen.py,
benchmarks/results/statistics_gen_photos_660.json).

Every other feature's statistics are the same (their floats up to summation
order), and SchemaGen infers the same schema from them
(tests/integration/test_statistics_options.py).  The schema here only names the
image: TFDV still computes statistics for every feature it reads.

LabelGuard and the report count each class from the label name's rank histogram,
which TFDV cuts at ``num_rank_histogram_buckets`` values (1,000 by default): with
more classes than that, the rarest classes had no count at all.  The histogram is
sized to the number of classes (a feature with more distinct values, the paths and
hashes, keeps its most frequent ones, as before).
"""

from __future__ import annotations

from components import contracts


# TFDV's default rank histogram size (StatsOptions.num_rank_histogram_buckets).
TFDV_RANK_HISTOGRAM_BUCKETS = 1000


def stats_options(classes: int = 0):
    """StatisticsGen's ``stats_options``: the image is bytes (TFDV's image_domain), and
    the label name's rank histogram holds all ``classes``."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    image = schema.feature.add(name=contracts.IMAGE_KEY, type=schema_pb2.BYTES)
    image.image_domain.SetInParent()
    return tfdv.StatsOptions(
        schema=schema, num_rank_histogram_buckets=max(TFDV_RANK_HISTOGRAM_BUCKETS, classes))
