"""Evaluating models: how well a frozen model's features serve a task (the linear probe)."""

from graft.evaluate.probe import ProbeResult, linear_probe, sequence_features

__all__ = ["ProbeResult", "linear_probe", "sequence_features"]
