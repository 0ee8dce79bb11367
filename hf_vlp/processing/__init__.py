"""Processors shared across architectures: region features, feature-file readers, CPT colored prompts."""

from .cpt import CptProcessor
from .readers import read_bua_tsv, read_npz_features, write_bua_tsv
from .region import RegionFeatureProcessor
from .vl_processor import RegionTextProcessor

__all__ = [
    "CptProcessor",
    "RegionFeatureProcessor",
    "RegionTextProcessor",
    "read_bua_tsv",
    "read_npz_features",
    "write_bua_tsv",
]
