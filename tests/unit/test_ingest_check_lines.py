"""The checks file's lines (components/ingest_checks.py): what is and is not a check."""

import numpy as np
import pytest

from components import ingest_checks, pixel_signature


def test_parse_rejects_what_is_not_a_check():
    """The pipeline root is trusted like MLMD, but a check that is not one (a bad
    hash, size or signature, wrong types) makes the whole file unusable."""
    sig = np.arange(pixel_signature.DIM, dtype=np.uint8).tobytes()
    good = ingest_checks.line("a" * 64, ingest_checks.Check(24, 32, sig))
    assert ingest_checks.parse([good, "", ingest_checks.line("b" * 64, ingest_checks.Check(5, 6, b""))]) == {
        "a" * 64: (24, 32, sig), "b" * 64: (5, 6, b"")}
    for bad in (good.replace("a" * 64, "A" * 64), good.replace('"height": 24', '"height": 0'),
                good.replace('"height": 24', '"height": true'), good.replace('"width": 32', '"width": "32"'),
                ingest_checks.line("c" * 64, ingest_checks.Check(1, 1, b"\0" * 10)), "[1, 2]", "{"):
        with pytest.raises(ValueError, match="line 2"):
            ingest_checks.parse([good, bad])


def test_the_key_changes_with_each_limit_a_verdict_depends_on():
    base = ingest_checks.key(50_000_000, 16)
    assert base == ingest_checks.key(50_000_000, 16)
    assert len({base, ingest_checks.key(50_000_000, 30), ingest_checks.key(40_000_000, 16)}) == 3
