"""The Parquet model format: schema (schema.py), manifest, streaming reader and writer."""

from .manifest import Manifest
from .reader import ModelReader
from .writer import ModelItem, WriteOptions, write_model

__all__ = ["Manifest", "ModelItem", "ModelReader", "WriteOptions", "write_model"]
