"""Where the int8 variant's top-1 flips come from (issue 14), per backbone and dataset.

    python -m benchmarks.int8_diagnosis [--backbones mobilenet_v1,efficientnet_lite0]
        [--images DIR,DIR...] [--train-per-class 40] [--eval-per-class 20]
        [--calibration 100] [--output benchmarks/results/int8_diagnosis.json]

Same data, head and calibration as ``benchmarks.tflite_variants`` (the pipeline's
conversion, bias correction on).  The reference is the float32 pixel model.  Each row
is one hypothesis, measured as top-1 agreement with the reference on the eval images:

* ``int8 probabilities``: the shipped variant; flips whose int8 top-2 probabilities tie
  or differ by one output step (1/256), and the float confidence of each flip.
* ``int8 logits``: the same model without the softmax (int8 logits dequantized): does the
  [N, C] softmax quantized to 1/256 make the flips?
* ``int8 features + float head``: the backbone alone in int8, its pooled features
  dequantized and fed to the float head: the backbone's share.
* ``float features on the int8 grid``: the float features rounded to the int8 feature
  tensor's scale: the head input's quantization alone.
* ``float model, rounded pixels``: the uint8 input alone (the reference sees the
  fractional pixels of the antialiased resize, the int8 model their rounding); and
  the shipped int8 model's agreement with that float model (its own error).
* ``calibrated on eval images`` / ``twice the calibration images (plus mirrored views)``: calibration
  representativeness (int8 logits).
* ``mixed, worst K float``: the K layers with the largest per-layer error
  (tf.lite.experimental.QuantizationDebugger, RMSE / scale, bias correction on) kept in
  float.

Prints a Markdown table and writes the rows (with each layer's RMSE / scale) as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks import tflite_variants as tv  # noqa: E402
from components import backbones, trainer  # noqa: E402
from components.tflite import convert, equalization  # noqa: E402
from components.tflite.runtime import Classifier  # noqa: E402
from pipeline import datasets  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "int8_diagnosis.json"
DEBUG_IMAGES = 40  # calibration images the per-layer debugger runs on


def _linear_head(head) -> tf_keras.Model:
    """The trained head without its softmax: same weights, logits out."""
    w, b = head.get_layer("head").get_weights()
    inputs = tf_keras.Input([w.shape[0]])
    dense = tf_keras.layers.Dense(w.shape[1], name="logits")
    model = tf_keras.Model(inputs, dense(inputs))
    dense.set_weights([w, b])
    return model


def _layer_name(tensor: str) -> str:
    """The Keras layer of a TFLite tensor name ('model/.../conv_pw_1/Conv2D;...')."""
    parts = tensor.split(";")[0].split("/")
    return parts[-2] if len(parts) > 1 else parts[-1]


def _batched(model, x, size=32):
    return np.concatenate([model(x[i:i + size]).numpy() for i in range(0, len(x), size)])


def _layer_errors(logit_model, calibration):
    """(converter, debug dataset, rows): QuantizationDebugger's per-layer statistics,
    each with rmse_scale = sqrt(MSE) / scale (1/sqrt(12) = 0.29 is rounding alone)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([convert._inference_function(logit_model)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def dataset():
        for p in calibration[:DEBUG_IMAGES]:
            yield [p[None]]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    rows = []
    for r in csv.DictReader(buf):
        scale = float(r["scale"])
        rows.append({"op": r["op_name"], "tensor": r["tensor_name"], "scale": scale,
                     "rmse_scale": float(np.sqrt(float(r["mean_squared_error"])) / scale) if scale else 0.0})
    return converter, dataset, rows


def _cumulative_errors(model, int8_bytes: bytes, pixels: np.ndarray):
    """[(ReLU6 layer, relative RMSE, RMSE / scale)] in graph order: each activation of the
    int8 file (every tensor kept) against the float model's on the same ``pixels``: where
    the error of the whole network builds up, input quantization included."""
    import tf_keras
    relus = [layer for owner in equalization._functionals(model) for layer in owner.layers
             if isinstance(layer, tf_keras.layers.ReLU)]
    with equalization._ChannelMax(model, pixels, relus, keep_all=True) as probe:
        pass
    interpreter = tf.lite.Interpreter(model_content=int8_bytes, experimental_preserve_all_tensors=True)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(pixels.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.round(pixels).astype(detail["dtype"]))
    interpreter.invoke()
    rows = []
    for t in interpreter.get_tensor_details():
        parts = t["name"].split(";")
        layer = next((r.name for r in relus for part in parts if f"/{r.name}/" in part), None)
        scale, zero = t["quantization"]
        if layer is None or not scale or layer in {r[0] for r in rows}:
            continue
        q = (interpreter.get_tensor(t["index"]).astype(np.float32) - zero) * scale
        f = probe.maxima[layer]
        if q.shape != f.shape:
            continue
        rmse = float(np.sqrt(((q - f) ** 2).mean()))
        rows.append((layer, round(rmse / float(np.sqrt((f ** 2).mean()) + 1e-12), 3), round(rmse / scale, 2)))
    return rows


def diagnose(name: str, dataset: str, data, args) -> list:
    spec = backbones.get_spec(name)
    classes, train, evals = data
    extractor = backbones.build_feature_extractor(name, "imagenet")
    x_train = tv._decode([f for f, _ in train], spec.input_size)
    x_eval = tv._decode([f for f, _ in evals], spec.input_size)
    y_train, y_eval = np.array([l for _, l in train]), np.array([l for _, l in evals])
    f_train, f_eval = _batched(extractor, x_train, 64), _batched(extractor, x_eval, 64)
    head, _ = trainer.train_head(f_train, y_train, f_eval, y_eval, len(classes), PipelineConfig(
        images="", workdir="", backbone=name, weights="imagenet", label_names=tuple(classes)).trainer_settings())
    w, b = head.get_layer("head").get_weights()
    logits = f_eval @ w + b
    confidence = tf.nn.softmax(logits).numpy().max(1)
    ref_top = logits.argmax(1)
    n = min(args.calibration, len(x_train))
    calibration = x_train[np.linspace(0, len(x_train) - 1, n).round().astype(int)]
    pixel_model = trainer.build_pixel_model(name, "imagenet", head)
    logit_model = trainer.build_pixel_model(name, "imagenet", _linear_head(head))
    image = tf_keras.Input([spec.input_size, spec.input_size, 3], batch_size=1)
    feature_model = tf_keras.Model(image, backbones.build_feature_extractor(name, "imagenet")(image))
    rows = []

    def row(hypothesis, top, **extra):
        flips = top != ref_top
        r = {"backbone": name, "dataset": dataset, "hypothesis": hypothesis,
             "agreement": float((~flips).mean()), "flips": int(flips.sum()),
             "accuracy": float((top == y_eval).mean()), "float_accuracy": float((ref_top == y_eval).mean()),
             "flips_float_confidence": [round(float(c), 3) for c in confidence[flips]],
             "confident": int((confidence >= tv.CONFIDENT).sum()),
             "confident_flips": int((flips & (confidence >= tv.CONFIDENT)).sum()), **extra}
        print(json.dumps(r), flush=True)
        rows.append(r)

    def int8(model, cal=calibration):
        return Classifier(convert.convert(model, "int8", lambda: iter(cal)), num_threads=args.threads)

    shipped_bytes = convert.convert(pixel_model, "int8", lambda: iter(calibration))
    shipped = Classifier(shipped_bytes, num_threads=args.threads)
    probs = shipped.predict(x_eval)
    top2 = np.sort(probs, 1)[:, -2:]
    step = float(shipped._out["quantization"][0])
    gap = top2[:, 1] - top2[:, 0]
    flips = probs.argmax(1) != ref_top
    row("int8 probabilities (shipped)", probs.argmax(1), flips_tied=int((flips & (gap < step / 2)).sum()),
        flips_one_step=int((flips & (np.abs(gap - step) < step / 2)).sum()))
    rows.append({"backbone": name, "dataset": dataset, "cumulative": "relative RMSE",
                 "activations": _cumulative_errors(pixel_model, shipped_bytes, x_eval[:16])})
    row("int8 logits", int8(logit_model).predict(x_eval).argmax(1))
    features = int8(feature_model)
    f8 = features.predict(x_eval)
    row("int8 features + float head", (f8 @ w + b).argmax(1),
        feature_rel_rmse=float(np.sqrt(((f8 - f_eval) ** 2).mean()) / f_eval.std()))
    scale, zero = features._out["quantization"]
    info = np.iinfo(features.output_dtype)
    grid = (np.clip(np.round(f_eval / scale + zero), info.min, info.max) - zero) * scale
    row("float features on the int8 grid", (grid @ w + b).argmax(1))
    rounded_top = _batched(logit_model, np.round(x_eval)).argmax(1)
    row("float model, rounded pixels", rounded_top)
    # The int8 model's own error: against the float model on the pixels it can see.
    row("int8 against the float model on rounded pixels", probs.argmax(1),
        agreement_rounded_reference=float((probs.argmax(1) == rounded_top).mean()),
        flips_rounded_reference=int((probs.argmax(1) != rounded_top).sum()))
    eval_cal = x_eval[np.linspace(0, len(x_eval) - 1, n).round().astype(int)]
    row("int8 logits, calibrated on eval images", int8(logit_model, eval_cal).predict(x_eval).argmax(1))
    row("int8 logits, twice the calibration images (plus mirrored views)",
        int8(logit_model, np.concatenate([calibration, calibration[:, :, ::-1]])).predict(x_eval).argmax(1))
    with contextlib.ExitStack() as stack:  # the pipeline's bias correction, as in convert.convert
        convert._enter_correction(stack, logit_model, lambda: iter(calibration), False, None)
        converter, dataset_fn, layers = _layer_errors(logit_model, calibration)
        worst = sorted(layers, key=lambda r: -r["rmse_scale"])
        for k in (2, 5):
            options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=[r["tensor"] for r in worst[:k]])
            mixed = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=dataset_fn, debug_options=options).get_nondebug_quantized_model()
            row(f"mixed, worst {k} layers float (rounded pixels)",
                Classifier(mixed, num_threads=args.threads).predict(np.round(x_eval)).argmax(1),
                float_layers=[_layer_name(r["tensor"]) for r in worst[:k]])
    rows.append({"backbone": name, "dataset": dataset, "layers": layers})
    return rows


def markdown(rows) -> str:
    lines = ["| backbone | dataset | hypothesis | agreement | flips | accuracy (float) | note |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        if "hypothesis" in r:
            note = {"flips_tied": "tied", "flips_one_step": "one step apart", "feature_rel_rmse": "feature rel. RMSE",
                    "agreement_rounded_reference": "agreement with float on rounded pixels"}
            extra = ", ".join(f"{label} {r[k]:.3g}" for k, label in note.items() if k in r)
            lines.append(f"| {r['backbone']} | {r['dataset']} | {r['hypothesis']} | {r['agreement']:.3f} | "
                         f"{r['flips']} | {r['accuracy']:.3f} ({r['float_accuracy']:.3f}) | {extra} |")
    lines += ["", "| backbone | dataset | worst layers: RMSE / scale |", "|---|---|---|"]
    for r in rows:
        if "layers" in r:
            worst = sorted(r["layers"], key=lambda x: -x["rmse_scale"])[:6]
            lines.append(f"| {r['backbone']} | {r['dataset']} | "
                         + ", ".join(f"{_layer_name(x['tensor'])} {x['rmse_scale']:.2f}" for x in worst) + " |")
    for r in rows:
        if "cumulative" in r:
            lines.append(f"| {r['backbone']} | {r['dataset']} | {r['cumulative']} of the activations: "
                         + ", ".join(f"{n} {e:.2f}" for n, e, _ in r["activations"][::3]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="mobilenet_v1,efficientnet_lite0")
    p.add_argument("--images", default="", help="comma-separated dataset folders (<class>/<image>); "
                   "default: the demo emoji set")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--calibration", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = p.parse_args(argv)
    names = tv.backbones_with_weights(p, args.backbones)
    roots = [pathlib.Path(d) for d in args.images.split(",") if d] or [pathlib.Path(datasets.emoji_dataset())]
    for root in roots:
        if not root.is_dir():
            p.error(f"--images: {root} is not a folder")
    rows = []
    for root in roots:
        data = tv._dataset(root, args.train_per_class, args.eval_per_class)
        for name in names:
            rows += diagnose(name, root.name, data, args)
    table = markdown(rows)
    print(table)
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": table, "settings": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
