"""Running a TFLite classifier: RGB pixels 0..255 in, probabilities out.

What `retrain predict` loads: the TFLite interpreter and NumPy only (plus
tflite-support's metadata reader for :meth:`Classifier.from_bytes_with_metadata`),
never TFX, tf.Transform or Beam, so that a prediction does not pay their start-up.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from components import native_stderr


def interpreter_class():
    """TensorFlow's tf.lite.Interpreter when TensorFlow is loaded already (the export
    measures parity with the converter's own runtime); otherwise tflite_runtime's when
    installed (no TensorFlow start-up), else TensorFlow's."""
    if "tensorflow" not in sys.modules:
        try:
            from tflite_runtime.interpreter import Interpreter
            return Interpreter
        except ImportError:
            pass
    import tensorflow as tf
    return tf.lite.Interpreter


class Classifier:
    """A TFLite image classifier: RGB pixels 0..255 in, probabilities out.

    Applies the metadata's input normalisation for float inputs; for integer inputs
    quantizes (the normalised value) with the input tensor's scale and zero point, and
    dequantizes integer outputs.
    """

    def __init__(self, model_bytes: bytes, num_threads: int = 2,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)):
        self._model_bytes, self._threads = model_bytes, num_threads
        self._batch, self._batch_failed = None, False  # see predict()
        with native_stderr.to_log():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            self.interpreter = interpreter_class()(model_content=model_bytes, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        shape = self._in["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"expected a [1, H, W, 3] image input, got {list(shape)}")
        self.input_size = (int(shape[1]), int(shape[2]))
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quantization = tuple(self._in["quantization"])
        self.num_classes = int(self._out["shape"][-1])

    @classmethod
    def from_bytes_with_metadata(cls, model_bytes: bytes, num_threads: int = 2) -> "Classifier":
        from components.tflite.metadata import read_metadata
        meta = read_metadata(model_bytes)
        c = cls(model_bytes, num_threads, meta.mean, meta.std)
        c.labels = meta.labels
        return c

    def _input(self, pixels: np.ndarray) -> np.ndarray:
        x = (np.asarray(pixels, np.float32) - self.mean) / self.std
        if self.input_dtype in (np.uint8, np.int8):
            scale, zero_point = self._in["quantization"]
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        return x.astype(self.input_dtype)[None]

    def _output(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype in (np.uint8, np.int8):
            scale, zero_point = self._out["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    def predict_one(self, pixels: np.ndarray) -> np.ndarray:
        """[H, W, 3] float pixels 0..255 -> [C] probabilities."""
        self.interpreter.set_tensor(self._in["index"], self._input(pixels))
        self.interpreter.invoke()
        return self._output(self.interpreter.get_tensor(self._out["index"])[0])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] float pixels 0..255 -> [N, C] probabilities.

        Several images go through a second interpreter whose input is resized to the
        batch (the file's input is [1, H, W, 3]): the same kernels give the same
        outputs per image, and one invoke per batch does not pay the per-invoke
        thread hand-off N times (on a busy 2-core machine, 32 single invokes with 2
        threads took 37 s against 5 s batched).  Falls back to one image at a time
        when a model's ops cannot be resized."""
        if len(pixels) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        if len(pixels) == 1 or self._batch_failed:
            return np.stack([self.predict_one(p) for p in pixels])
        try:
            batch = self._batch_interpreter(len(pixels))
            batch.set_tensor(self._in["index"], np.concatenate([self._input(p) for p in pixels]))
            batch.invoke()
            return self._output(batch.get_tensor(self._out["index"]))
        except (RuntimeError, ValueError):
            self._batch_failed = True
            return np.stack([self.predict_one(p) for p in pixels])

    def _batch_interpreter(self, n: int):
        if self._batch is None or self._batch[0] != n:
            with native_stderr.to_log():
                interpreter = interpreter_class()(model_content=self._model_bytes, num_threads=self._threads)
                interpreter.resize_tensor_input(self._in["index"], [n, *self.input_size, 3], strict=False)
                interpreter.allocate_tensors()
            self._batch = (n, interpreter)
        return self._batch[1]
