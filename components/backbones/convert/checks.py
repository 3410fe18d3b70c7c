"""What every conversion shares: weight assignment with a complete layer mapping,
and the comparison of the converted network with its source on fixed images."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from components.backbones.fetch import BackboneWeightsError

# Converted probabilities must reproduce the source network's within this.
VERIFY_TOLERANCE = 1e-4


def verification_images() -> np.ndarray:
    """Fixed, smooth RGB 0..255 images [2, 224, 224, 3] for the conversion checks."""
    rng = np.random.RandomState(1234)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224.0
    out = np.empty((2, 224, 224, 3), np.float32)
    for i in range(2):
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            out[i, ..., c] = 127.5 + 110.0 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    return out


def assign_weights(app, assign: Dict[str, List[np.ndarray]]) -> None:
    """Sets every weighted layer of ``app`` from ``assign`` (layer name -> weights);
    the mapping must cover exactly the weighted layers, and shapes must match."""
    weighted = {layer.name for layer in app.layers if layer.weights}
    if weighted != set(assign):
        raise BackboneWeightsError(
            f"layer mapping mismatch: no weights for {sorted(weighted - set(assign))}, "
            f"unknown layers {sorted(set(assign) - weighted)}"
        )
    for layer_name, values in assign.items():
        app.get_layer(layer_name).set_weights(values)  # raises on any shape mismatch


def check_reproduces(ours: np.ndarray, source: np.ndarray, what: str) -> None:
    """``ours`` (probabilities of the converted network) equal ``source``'s within
    VERIFY_TOLERANCE, with the same top class; BackboneWeightsError naming ``what``."""
    diff = float(np.abs(ours - source).max())
    if not diff < VERIFY_TOLERANCE or not (ours.argmax(1) == source.argmax(1)).all():
        raise BackboneWeightsError(f"{what} (max probability difference {diff:.3g})")
