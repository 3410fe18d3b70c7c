"""Former home of the TFLiteExport component, now components/tflite/.

Kept for class paths recorded before the move: a Kubeflow pipeline spec compiled
earlier names ``components.tflite_export.Executor``.  New code imports
components.tflite.component.
"""

from components.tflite.component import Executor, TFLiteExport, TFLiteModels  # noqa: F401
