"""Converters at the edge: other formats (Hugging Face transformers) in and out of graft's one
format."""

from graft.model.convert.hf import is_hf_directory, load_hf_model, read_hf_config
from graft.model.convert.hf_export import export_hf

__all__ = ["export_hf", "is_hf_directory", "load_hf_model", "read_hf_config"]
