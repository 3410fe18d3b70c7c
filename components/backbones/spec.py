"""What one backbone is: :class:`BackboneSpec`, one frozen entry per backbone.

Everything the rest of the package needs to know about a backbone lives in its
entry (see ``registry.py``); code reads the entry's fields and never branches on
a backbone's name.  New per-backbone facts become new fields with a default, set in
the entries that have them.  No TensorFlow is imported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import numpy as np

from components import contracts
from components.backbones.fetch import BackboneWeightsError, PyPIFile, weights_dir

if TYPE_CHECKING:
    import tf_keras

# (input_size, include_top, keras_weights) -> the bare application: no input scaling,
# softmax [N, 1000] with the ImageNet head, else the convolutional base's feature map;
# keras_weights="imagenet" asks Keras to download its own ImageNet weights.
Builder = Callable[[int, bool, Optional[str]], "tf_keras.Model"]
# (source file bytes, spec) -> the application with its head, carrying the source's
# weights, checked against the source network (BackboneWeightsError otherwise).
Converter = Callable[[bytes, "BackboneSpec"], "tf_keras.Model"]


@dataclasses.dataclass(frozen=True)
class InputScaling:
    """scaled = (x - mean) / std on RGB 0..255: one value for all channels or one per
    channel (R, G, B); ``description`` says it for people (reports, TFLite metadata)."""

    description: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) not in (1, 3) or len(self.mean) != len(self.std):
            raise ValueError(f"input scaling needs 1 or 3 means and as many stds: {self.mean}, {self.std}")


@dataclasses.dataclass(frozen=True)
class KerasWeights:
    """Keras' own ImageNet weight files (``tf_keras.utils.get_file`` cache names)."""

    top_file: str  # with the classification head
    notop_file: str
    # tf_keras.src.applications.<url_module>.<url_attr>: the download location of
    # notop_file (a folder URL, or the file's URL when it ends with .h5).
    url_module: str
    url_attr: str

    @property
    def url(self) -> str:
        """Where Keras downloads the no-top file from ("" if this Keras does not say)."""
        try:
            mod = __import__(f"tf_keras.src.applications.{self.url_module}", fromlist=[self.url_attr])
            base = getattr(mod, self.url_attr)
        except (ImportError, AttributeError):
            return ""
        return base if base.endswith(".h5") else base + self.notop_file


@dataclasses.dataclass(frozen=True)
class ConvertedWeights:
    """ImageNet weights converted offline from a file on PyPI, cached as .h5."""

    source: PyPIFile
    convert: Converter
    h5_name: str  # file name under weights_dir()
    version: int  # bump when the conversion changes: invalidates cached .h5 and fingerprints

    def path(self) -> pathlib.Path:
        return weights_dir() / self.h5_name


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    label: str  # for people: "MobileNet v1"
    input_size: int  # square H = W
    feature_dim: int  # length of the pooled feature vector
    input_scaling: InputScaling
    builder: Builder
    head_layer: str  # a layer that exists only in the application with its ImageNet head
    # Last layer of the convolutional base; None: the application's output without its
    # head, or the input of its final pooling (auto-named last activations).
    feature_layer: Optional[str] = None
    # Layer whose input starts the base: cuts off a built-in preprocessing stem.
    base_input: Optional[str] = None
    # Weight sources: weights="imagenet" uses `converted` when set, else Keras' file in
    # the Keras cache; weights="keras" needs `keras`.
    keras: Optional[KerasWeights] = None
    converted: Optional[ConvertedWeights] = None
    # Fine-tuning (`--trainable-blocks N`): the first layer of each block of the
    # convolutional base, bottom to top. The top N blocks are blocks[-N:] up to
    # feature_layer (so the last block holds any top 1x1 conv); the cut for N is the
    # input of blocks[-N]. Empty: the backbone cannot fine-tune (N > 0 is refused).
    blocks: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.keras is None and self.converted is None:
            raise ValueError(f"backbone {self.name!r} has no ImageNet weight source")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"backbone {self.name!r} lists a block twice: {self.blocks}")

    def cut_layer(self, trainable_blocks: int) -> str:
        """The layer whose input is the cut for ``trainable_blocks`` (N >= 1) top blocks."""
        if not 1 <= trainable_blocks <= len(self.blocks):
            raise ValueError(f"{self.label} has {len(self.blocks)} blocks to fine-tune; "
                             f"trainable blocks must be 0..{len(self.blocks)}, got {trainable_blocks}")
        return self.blocks[-trainable_blocks]

    # -- input scaling (the model applies it itself; these are for checks and reports)
    @property
    def scaling(self) -> str:
        return self.input_scaling.description

    @property
    def mean(self) -> Tuple[float, ...]:
        return self.input_scaling.mean

    @property
    def std(self) -> Tuple[float, ...]:
        return self.input_scaling.std

    def scale(self, pixels: np.ndarray) -> np.ndarray:
        """NumPy version of the in-model scaling (for checks)."""
        return (np.asarray(pixels, np.float32) - np.float32(self.mean)) / np.float32(self.std)

    # -- the application
    def application(self, include_top: bool = False, keras_weights: Optional[str] = None) -> "tf_keras.Model":
        """The bare application (see :data:`Builder`), random weights unless
        ``keras_weights="imagenet"``."""
        if keras_weights is not None:
            self.keras_weights()  # raises when Keras has none
        return self.builder(self.input_size, include_top, keras_weights)

    def keras_weights(self) -> KerasWeights:
        if self.keras is None:
            raise BackboneWeightsError(
                f"Keras has no {self.label} weights to download; use weights='imagenet' "
                f"after `{self.fetch_command}` (needs PyPI access)"
            )
        return self.keras

    # -- weights
    @property
    def fetch_command(self) -> str:
        """The command that makes weights="imagenet" available."""
        if self.name == contracts.DEFAULT_BACKBONE:
            return "retrain fetch-weights"
        return f"retrain fetch-weights --backbone {self.name}"

    @property
    def weights_source(self) -> str:
        """Where weights="imagenet" comes from, for people."""
        if self.converted is not None:
            src = self.converted.source
            return (f"offline: PyPI {src.kind} {src.requirement} ({src.description}, converted; "
                    f"`{self.fetch_command}`)")
        return ("Keras ImageNet weights: downloaded into the Keras cache when online "
                f"(`retrain fetch-weights --backbone {self.name}`), or a local .h5 file")

    def converted_fingerprint(self) -> str:
        """Cache key of the converted ImageNet weights: from the source file's sha256 and
        the conversion version, not the .h5 bytes (h5py/HDF5 versions change those)."""
        conv = self.converted
        if conv is None:
            raise ValueError(f"backbone {self.name!r} has no converted weights")
        return hashlib.sha256(
            f"{self.name} imagenet; source {conv.source.cache_name} sha256={conv.source.member_sha256}; "
            f"conversion v{conv.version}".encode()
        ).hexdigest()
