"""Data for hf_vlp: the embedded shapes world, region features, and loaders for the common annotation formats."""

from ..processing.readers import read_bua_tsv, read_npz_features, write_bua_tsv
from .features import RegionFeatureExtractor
from .loaders import build_answer_vocabulary, load_coco_captions, load_vqa_v2
from .shapes import SHAPES_CLASSES, SHAPES_COLORS, SHAPES_TASKS, SHAPES_VQA_ANSWERS, shapes_dataset

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_COLORS",
    "SHAPES_TASKS",
    "SHAPES_VQA_ANSWERS",
    "RegionFeatureExtractor",
    "build_answer_vocabulary",
    "load_coco_captions",
    "load_vqa_v2",
    "read_bua_tsv",
    "read_npz_features",
    "shapes_dataset",
    "write_bua_tsv",
]
