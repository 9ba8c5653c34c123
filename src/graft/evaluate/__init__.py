"""Evaluating models: metrics and `graft eval`."""
