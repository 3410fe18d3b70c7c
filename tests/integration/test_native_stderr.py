"""The TFLite converter's and interpreter's C++ lines (`W0000 ... Ignored
output_format`, `INFO: Created TensorFlow Lite XNNPACK delegate`) go to the run's
log, not the terminal, once `retrain run` (without --verbose) names one (issue 17).
One subprocess: fd 2 is what is tested, which pytest's capture does not see."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tf_keras
    from components import native_stderr
    from components.tflite import convert, runtime
    inputs = tf_keras.Input([8, 8, 3], batch_size=1)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(
        tf_keras.layers.GlobalAveragePooling2D()(inputs)))
    print("-- before", file=sys.stderr, flush=True)
    convert.convert(model, "float32")             # nothing named: lines on the terminal
    print("-- after", file=sys.stderr, flush=True)
    with native_stderr.sent_to(sys.argv[1]):
        data = convert.convert(model, "float32")
        runtime.Classifier(data).predict_one(np.zeros((8, 8, 3), np.float32))
        print("-- python still reaches the terminal", file=sys.stderr, flush=True)
    assert "TFX_RETRAIN_NATIVE_STDERR_LOG" not in os.environ  # restored for what follows
""")


def test_converter_and_interpreter_lines_go_to_the_log(tmp_path):
    log = tmp_path / "logs" / "native-stderr.log"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TFX_RETRAIN_NATIVE_STDERR_LOG", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(log)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, _, after = proc.stderr.partition("-- after")
    assert "Ignored output_format" in before  # the defect, without a log named
    assert "Ignored output_format" not in after and "XNNPACK" not in after, after
    assert "-- python still reaches the terminal" in after
    text = log.read_text()
    assert "Ignored output_format" in text and "Created TensorFlow Lite XNNPACK delegate" in text
