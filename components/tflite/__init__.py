"""TFLite variants for phones: conversion, embedded metadata, parity with the SavedModel.

  variants.py         variant names, file names, default variants/bounds/calibration count
  convert.py          Keras pixel model -> flatbuffer per variant; int8 calibration images
  bias_correction.py  int8 BatchNorm bias correction (public tf_keras graph API)
  metadata.py         tflite-support metadata: labels, normalisation, description
  runtime.py          Classifier: the interpreter wrapper (`retrain predict` loads only this)
  parity.py           ParityReport: parity.json, typed; ParityCounter
  reference.py        parity's reference: the head on cached features, or the SavedModel
  export.py           convert + write + measure the configured variants of one model
  component.py        the TFLiteExport TFX component, its executor and TFLiteModels

Importing the package imports none of them: `retrain predict` must not load TFX.
"""
