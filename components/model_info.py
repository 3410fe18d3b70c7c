"""What the Trainer recorded beside its SavedModel (head/head.json), read back safely.

The Evaluator (feature namespace) and the Pusher (training fingerprint) read it
from Model artifacts that may come from older code or another workdir: a
missing, oversized or malformed file reads as None, never as an error, and
they then fall back to what they did before these fields existed.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from components import contracts

MAX_HEAD_INFO_BYTES = 1 << 20  # head.json is well under 1 KB plus the label names


def read_head_info(model_uri: str) -> Optional[Dict[str, Any]]:
    """head/head.json of the Model artifact at `model_uri` as a dict, or None."""
    import tensorflow as tf
    path = contracts.join(model_uri, contracts.HEAD_DIR, contracts.HEAD_INFO_FILE)
    try:
        if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length > MAX_HEAD_INFO_BYTES:
            return None
        with tf.io.gfile.GFile(path) as f:
            info = json.loads(f.read(MAX_HEAD_INFO_BYTES + 1))
    except (tf.errors.OpError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def text_field(info: Optional[Dict[str, Any]], key: str) -> Optional[str]:
    """info[key] when it is a non-empty string, else None."""
    value = info.get(key) if info else None
    return value if isinstance(value, str) and value else None
