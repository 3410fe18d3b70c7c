"""Kubeflow Pipelines: compile the pipeline to a KFP v2 spec, submit and schedule it,
and run a compiled spec locally the way KFP's launcher would (see docs/kubeflow.md)."""
