"""The int8 variant's calibration without running TFLite's calibrator on every image.

TFLite's calibrator runs the float TFLite model once per calibration image (about
55 ms each for MobileNet v1) and records, per tensor, the plain union of each
image's min and max (tensorflow/lite/tools/optimize/calibration/calibration_logger.h,
``MinMax::Update``; its max starts at FLT_MIN).  One batched TensorFlow pass of the
Keras model gives the same per-image ranges in a fraction of the time, up to float
rounding (about 1e-6 relative).  :func:`quantized_int8` therefore

1. calibrates on the range anchor alone with TFLite's own calibrator
   (``converter._experimental_calibrate_only``), which yields the calibrated float
   flatbuffer with every tensor that needs statistics;
2. maps each of those tensors to the TensorFlow op whose output it is (its name is
   the ';'-joined names of the ops fused into it; the anchor's record checks the
   mapping) and takes, in one batched pass, every image's range of each;
3. runs the calibrator again on the anchor and only the images that widen some
   tensor's range beyond the anchor's (MobileNet v1: 4 of 99 demo emoji,
   EfficientNet-Lite0: 26): the union over a set holding every extreme is the union
   over all images, in the calibrator's own floats, and is checked against the pass
   (a min above 0 or a max below 0 is left at the anchor's: the quantizer widens
   every range to include 0, so it does not change the file; a softmax's output
   is left at the anchor's too: its int8 range is fixed, ``_FIXED_OUTPUT_RANGE``);
4. quantizes with ``mlir_quantize`` exactly as ``TFLiteConverter`` does after
   calibration (tensorflow/lite/python/lite.py ``_quantize``; the same calibrate-only
   + ``mlir_quantize`` pair as TF's QuantizationDebugger,
   tensorflow/lite/tools/optimize/debugging/python/debugger.py).

The result is the full calibrator's file byte for byte (tests/integration/
test_int8_calibration_ranges.py).  The calibrator logs an op's inputs again after the
op ran (tensorflow/lite/tools/optimize/calibration/calibrator.cc, ``LoggingEval``):
an op that runs in place (ADD, MUL: its output shares its input's buffer) adds its
output's range to that input's record; aliased buffers are read from the
interpreter and counted the same way.  Any tensor that cannot be mapped with
certainty makes :func:`quantized_int8` return None (logged), and the caller runs the
full calibrator.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

# Images per batch of the TensorFlow pass (activations of one batch are in memory).
BATCH = 16
# A mapped tensor's anchor range must match the calibrator's record of the anchor
# within this (relative to the range's magnitude, at least 1): TFLite runs the
# BatchNorm-folded float graph, TensorFlow the unfolded one.
ANCHOR_TOLERANCE = 1e-3
# TensorFlow's and TFLite's per-image extremes differ by about 1e-6 (relative; measured
# at most 2.6e-6): images within this of a range's extreme may be the calibrator's.
TIE_TOLERANCE = 1e-5

# Elementwise ops with constant operands: applied to the pixels alone, the anchor
# (0..255 in every channel) already holds their extreme values.
_ELEMENTWISE = ("ADD", "SUB", "MUL")
# Ops whose int8 output range is fixed whatever was recorded: TFLite's int8 softmax
# takes only scale 1/256, zero point -128 (tensorflow/lite/kernels/activations.cc,
# SoftmaxPrepare), and the quantizer writes those.  Their records need not be the
# calibrator's floats.  A fitted head's softmax is within float noise of 1.0 on
# almost every image, so each image would otherwise be a possible holder of its
# maximum: on 100 photos, 99 were recalibrated for that tensor alone.
_FIXED_OUTPUT_RANGE = ("SOFTMAX",)
CONVERSION_METADATA = b"CONVERSION_METADATA"


class Unmappable(Exception):
    """A tensor with statistics the fast path cannot reproduce with certainty."""


@dataclasses.dataclass
class _Tensor:
    index: int
    name: str
    recorded: Tuple[float, float]  # the calibrator's min/max on the anchor alone


def quantized_int8(model, converter, anchor: np.ndarray,
                   calibration: Callable[[], Iterator[np.ndarray]]) -> Optional[bytes]:
    """The full-integer int8 flatbuffer of ``model`` calibrated on ``anchor`` plus the
    ``calibration`` images, or None (logged once, with the reason) when a tensor cannot
    be mapped: then run ``converter`` as is.  ``converter`` is the int8 TFLiteConverter
    of ``model`` (representative dataset, uint8 I/O set); it is left as it was given.
    Reads the model's weights now (a bias correction in force is seen)."""
    calibrated = calibrated_model(model, converter, anchor, calibration)
    return None if calibrated is None else quantize(calibrated, converter)


def calibrated_model(model, converter, anchor: np.ndarray,
                     calibration: Callable[[], Iterator[np.ndarray]]) -> Optional[bytes]:
    """What ``converter`` with ``_experimental_calibrate_only`` returns for the anchor
    plus the calibration images (the float model with every tensor's min/max); None
    (logged) when a tensor cannot be mapped.

    The calibrator runs on the anchor alone; one batched TensorFlow pass gives every
    tensor's per-image range, hence the union and the few images that widen some
    tensor's range beyond the anchor's.  The calibrator then runs again on the anchor
    and those images only: its records are then its own floats (the union over a set
    holding each extreme is the union over all), checked against the pass's union."""
    from tensorflow.lite.tools import flatbuffer_utils
    calibrated = _calibrate_on(converter, anchor)
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    try:
        ranges, widening = union_ranges(model, calibrated, flat, anchor, calibration)
        if not widening:
            return calibrated
        chosen = set(widening)
        logging.info("int8 calibration: %d calibration images widen a range beyond the anchor's", len(chosen))
        exact = _recalibrate(calibrated, [anchor] + [p for i, p in enumerate(calibration()) if i in chosen])
        _check(exact, ranges)
        return exact
    except Unmappable as e:
        logging.warning("int8 calibration: full TFLite calibrator used (%s)", e)
        return None


def _recalibrate(calibrated: bytes, images: Sequence[np.ndarray]) -> bytes:
    """``calibrated`` calibrated again by TFLite's calibrator on ``images`` (what
    lite.py's ``_quantize`` runs, on the already converted float model)."""
    from tensorflow.lite.python.optimize import calibrator
    samples = [[np.asarray(p, np.float32)[None]] for p in images]
    return bytes(calibrator.Calibrator(calibrated).calibrate(lambda: iter(samples)))


def _check(calibrated: bytes, ranges: Dict[int, Tuple[float, float]]) -> None:
    """Unmappable unless ``calibrated``'s records equal the TensorFlow pass's union."""
    from tensorflow.lite.tools import flatbuffer_utils
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    recorded = {t.index: t for t in stat_tensors(flat)}
    for index, (low, high) in ranges.items():
        t = recorded.get(index)
        scale = max(1.0, abs(low), abs(high))
        # Sides beyond 0 are not recalibrated (union_ranges): the quantizer uses 0.
        low_off = 0.0 if t is None or low > 0 else abs(t.recorded[0] - low)
        high_off = 0.0 if t is None or high < 0 else abs(t.recorded[1] - high)
        if t is None or max(low_off, high_off) > ANCHOR_TOLERANCE * scale:
            raise Unmappable(f"tensor {index}: calibrator {None if t is None else t.recorded} against the "
                             f"TensorFlow pass's ({low:.6g}, {high:.6g})")


def quantize(calibrated: bytes, converter) -> bytes:
    """The calibrated model quantized as ``converter`` quantizes after calibration
    (lite.py: ``_quantize``'s mlir_quantize, then ``_optimize_tflite_model``'s
    read-only buffer deduplication)."""
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers, mlir_quantize
    data = mlir_quantize(calibrated, converter._experimental_disable_per_channel,  # pylint: disable=protected-access
                         input_data_type=converter.inference_input_type,
                         output_data_type=converter.inference_output_type,
                         enable_variable_quantization=False)
    if not converter._experimental_use_buffer_offset:  # pylint: disable=protected-access
        data = deduplicate_readonly_buffers(data)
    return _conversion_metadata_last(bytes(data))


def _conversion_metadata_last(data: bytes) -> bytes:
    """``data`` with its CONVERSION_METADATA entry (added by the calibrate-only
    conversion, before mlir_quantize added its own entries) moved last, buffer
    included, where TFLiteConverter adds it (lite.py ``_convert_and_export_metrics``):
    the same file byte for byte when the ranges are the same."""
    from tensorflow.lite.tools import flatbuffer_utils
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    entries = [m for m in flat.metadata or [] if m.name == CONVERSION_METADATA]
    if len(entries) != 1:
        return data
    entry = entries[0]
    order = [i for i in range(len(flat.buffers)) if i != entry.buffer] + [entry.buffer]
    new_index = {old: new for new, old in enumerate(order)}
    flat.buffers = [flat.buffers[i] for i in order]
    for graph in flat.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new_index[tensor.buffer]
    for m in flat.metadata:
        m.buffer = new_index[m.buffer]
    flat.metadata = [m for m in flat.metadata if m is not entry] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def _calibrate_on(converter, anchor: np.ndarray) -> bytes:
    """The calibrated float flatbuffer, calibrated on ``anchor`` alone."""
    saved = converter.representative_dataset, converter._experimental_calibrate_only  # pylint: disable=protected-access
    converter.representative_dataset = lambda: iter([[anchor[None].astype(np.float32)]])
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    try:
        return bytes(converter.convert())
    finally:
        converter.representative_dataset, converter._experimental_calibrate_only = saved  # pylint: disable=protected-access


@functools.lru_cache(maxsize=None)
def _builtin_names() -> Dict[int, str]:
    """TFLite builtin operator code -> its name (the schema's BuiltinOperator)."""
    from tensorflow.lite.python import schema_py_generated as schema
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _op_name(flat, op) -> str:
    code = flat.operatorCodes[op.opcodeIndex]
    return _builtin_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "")


def stat_tensors(flat) -> List[_Tensor]:
    """The tensors of the calibrated model's subgraph that carry min/max."""
    out = []
    for i, t in enumerate(flat.subgraphs[0].tensors):
        q = t.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1 and len(q.max) == 1:
            out.append(_Tensor(i, t.name.decode(), (float(q.min[0]), float(q.max[0]))))
    return out


def _shape(tensor) -> List[int]:
    return [] if tensor.shape is None else [int(d) for d in tensor.shape]


def _aliases(calibrated: bytes, flat) -> Dict[int, List[int]]:
    """tensor -> outputs of the ops that ran in place over its buffer (same address in
    the interpreter's arena, default delegates off as in the calibrator)."""
    import tensorflow as tf
    interp = tf.lite.Interpreter(
        model_content=calibrated,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()

    def address(i):
        try:
            return interp.tensor(i)().__array_interface__["data"][0]
        except ValueError:  # no data (optional or unallocated tensor)
            return None
    out: Dict[int, List[int]] = {}
    for op in flat.subgraphs[0].operators:
        for i in op.inputs:
            if i < 0:
                continue
            a = address(i)
            out[i] = out.get(i, []) + [o for o in op.outputs if a is not None and address(o) == a]
    return out


def union_ranges(model, calibrated: bytes, flat, anchor: np.ndarray,
                 calibration: Callable[[], Iterator[np.ndarray]]) -> Tuple[Dict[int, Tuple[float, float]], List[int]]:
    """({tensor index: (min, max) over the anchor and every calibration image, as the
    calibrator would record it}, [the calibration images, by position, that may hold
    a range's extreme beyond the anchor's]).  Unmappable when a tensor cannot be
    reproduced."""
    graph = flat.subgraphs[0]
    tensors = stat_tensors(flat)
    constant = {i for i, t in enumerate(graph.tensors)
                if t.buffer < len(flat.buffers) and flat.buffers[t.buffer].data is not None
                and len(flat.buffers[t.buffer].data)}
    # Fixed by the anchor: the graph inputs, and elementwise ops of one of them with
    # scalar or per-channel constants (the anchor spans 0..255 in every channel).
    fixed = set(graph.inputs)
    for op in graph.operators:
        variable = [i for i in op.inputs if i >= 0 and i not in constant]
        per_channel = all(int(np.prod(_shape(graph.tensors[i])[:-1])) <= 1 for i in op.inputs
                          if i >= 0 and i in constant)
        if _op_name(flat, op) in _ELEMENTWISE and len(variable) == 1 and variable[0] in fixed and per_channel:
            fixed.update(op.outputs)
    aliases = _aliases(calibrated, flat)
    fixed_output = {o for op in graph.operators if _op_name(flat, op) in _FIXED_OUTPUT_RANGE for o in op.outputs}
    for t in tensors:
        if t.index in fixed and any(a not in fixed for a in aliases.get(t.index, [])):
            raise Unmappable(f"{t.name} shares its buffer with a tensor that is not fixed by the anchor")
    # The names of the ops fused into each other tensor (';'-separated).
    mapped = {t.index: tuple(s for s in t.name.split(";") if s) for t in tensors if t.index not in fixed}
    stats, pixel_range = _batched_stats(model, sorted(set(mapped.values())), anchor, calibration)
    low, high = float(anchor.min()), float(anchor.max())
    if pixel_range[0] < low or pixel_range[1] > high:
        raise Unmappable(f"calibration pixels {pixel_range} outside the anchor's {low, high}")

    def per_image(index):
        ranges = [stats[mapped[index]]]
        ranges += [stats[mapped[a]] for a in aliases.get(index, []) if a != index]
        return np.min([r[0] for r in ranges], axis=0), np.max([r[1] for r in ranges], axis=0)
    out, widening = {}, set()
    for t in tensors:
        if t.index in fixed:
            continue  # the anchor's record is the union already
        if t.index in fixed_output and not any(a != t.index for a in aliases.get(t.index, [])):
            continue  # the quantizer ignores its record (_FIXED_OUTPUT_RANGE)
        mins, maxs = per_image(t.index)
        # The calibrator's max starts at FLT_MIN (numeric_limits<float>::min(), calibration_logger.h).
        anchor_max = max(float(maxs[0]), float(np.finfo(np.float32).tiny))
        scale = max(1.0, abs(t.recorded[0]), abs(t.recorded[1]))
        if max(abs(mins[0] - t.recorded[0]), abs(anchor_max - t.recorded[1])) > ANCHOR_TOLERANCE * scale:
            raise Unmappable(f"{t.name}: anchor range ({mins[0]:.6g}, {anchor_max:.6g}) from "
                             f"{mapped[t.index]} is not the calibrator's {t.recorded}")
        # Union with the calibrator's own anchor record: the anchor counts exactly once.
        out[t.index] = (min(float(mins[1:].min(initial=np.inf)), t.recorded[0]),
                        max(float(maxs[1:].max(initial=-np.inf)), t.recorded[1]))
        # The images that may hold this tensor's extreme beyond the anchor's record.  A
        # min above 0 (a max below) does not count: the quantizer's range includes 0
        # (a softmax's near-0 minimum would otherwise tie on most images).
        tie = 2 * TIE_TOLERANCE * scale
        if out[t.index][0] <= 0:
            widening.update(_holders(mins[1:], mins[1:] < t.recorded[0], out[t.index][0], tie))
        if out[t.index][1] >= 0:
            widening.update(_holders(maxs[1:], maxs[1:] > t.recorded[1], out[t.index][1], tie))
    return out, sorted(widening)


def _holders(values: np.ndarray, beyond: np.ndarray, extreme: float, tie: float) -> List[int]:
    """Positions of the ``values`` (``beyond`` the anchor's record) that may be the
    calibrator's ``extreme``: those within float noise (``tie``) of it.  Of several
    exactly at it (a clamp such as ReLU6's 6.0, exact in TFLite too) one is enough."""
    near = beyond & (np.abs(values - extreme) <= tie)
    exact = np.nonzero(near & (values == extreme))[0]
    return np.nonzero(near & (values != extreme))[0].tolist() + exact[:1].tolist()


def _batched_stats(model, candidates: Sequence[Tuple[str, ...]], anchor: np.ndarray,
                   calibration: Callable[[], Iterator[np.ndarray]]):
    """({candidate: (per-image mins, per-image maxs)}, (pixel min, pixel max)), the
    anchor first, from one batched pass of ``model`` (in batches of BATCH) that outputs
    the per-image min and max of each candidate's op (:func:`_resolve`)."""
    import tensorflow as tf
    size = tuple(int(d) for d in model.input_shape[1:])

    def trace(image):
        output = model(image, training=False)
        graph = tf.compat.v1.get_default_graph()
        result = {}
        for candidate in candidates:
            value = _resolve(graph, candidate, output).outputs[0]
            axes = list(range(1, len(value.shape)))
            result[candidate] = (tf.reduce_min(value, axis=axes), tf.reduce_max(value, axis=axes))
        return result
    fn = tf.function(trace, input_signature=[tf.TensorSpec([None, *size], tf.float32)], autograph=False)
    try:
        concrete = fn.get_concrete_function()
    except (KeyError, ValueError) as e:
        raise Unmappable(str(e)) from e

    mins: Dict[Tuple[str, ...], List[np.ndarray]] = {c: [] for c in candidates}
    maxs: Dict[Tuple[str, ...], List[np.ndarray]] = {c: [] for c in candidates}
    pixel = [np.inf, -np.inf]

    def images():
        yield np.asarray(anchor, np.float32)
        for pixels in calibration():
            yield np.asarray(pixels, np.float32)
    from components.tflite.convert import batches
    for batch in batches(images(), BATCH):
        x = np.stack(batch)
        pixel = [min(pixel[0], float(x.min())), max(pixel[1], float(x.max()))]
        try:
            result = concrete(tf.constant(x))
        except tf.errors.OpError as e:  # e.g. a model that takes one image at a time
            raise Unmappable(f"the batched pass failed: {str(e).splitlines()[0][:200]}") from e
        for c, (lo, hi) in result.items():
            mins[c].append(lo.numpy())
            maxs[c].append(hi.numpy())
    return {c: (np.concatenate(mins[c]), np.concatenate(maxs[c])) for c in candidates}, tuple(pixel)


def _resolve(graph, segments: Sequence[str], output):
    """The op of ``graph`` whose output the TFLite tensor named ``segments`` (the ops
    fused into it) is: of those in the graph, the one all others feed; ``Identity`` is
    the converted function's output, the model's."""
    import tensorflow as tf
    found = []
    for name in segments:
        if name == "Identity" and isinstance(output, tf.Tensor):
            found.append(output.op)
            continue
        try:
            found.append(graph.get_operation_by_name(name))
        except KeyError:
            continue
    if not found:
        raise Unmappable(f"no op named {segments[0]!r} in the model's graph")
    last = [op for op in found if all(other is op or _feeds(other, op) for other in found)]
    if len(last) != 1:
        raise Unmappable(f"ops fused as {';'.join(segments)!r} have no single last op")
    # Output 0 is the value; FusedBatchNorm's others are its statistics.
    if len(last[0].outputs) != 1 and not last[0].type.startswith("FusedBatchNorm"):
        raise Unmappable(f"op {last[0].name!r} has several outputs")
    return last[0]


def _feeds(a, b) -> bool:
    """Whether op ``a``'s output reaches op ``b`` (searching back from ``b``)."""
    seen, stack = set(), [b]
    while stack and len(seen) < 100_000:
        op = stack.pop()
        for t in op.inputs:
            if t.op is a:
                return True
            if id(t.op) not in seen:
                seen.add(id(t.op))
                stack.append(t.op)
    return False
