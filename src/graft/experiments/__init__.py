"""Experiments on top of the library: the transfer report, the objective comparison, the linear
probe and the quickstart's tasks. They may import every layer; nothing in the library imports them
(the CLI and the quickstart, at the top, run them)."""
