"""Processors shared across architectures: region features, feature-file readers, CPT colored prompts."""

from .region import RegionFeatureProcessor

__all__ = ["RegionFeatureProcessor"]
