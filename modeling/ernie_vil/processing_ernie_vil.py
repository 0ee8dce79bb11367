"""ERNIE-ViL processor — a variant of ViLBERT's: same inputs (BERT uncased WordPiece, whole-image region 0)."""

from hf_vlp.modeling.vilbert.processing_vilbert import VilbertProcessor


class ErnieVilProcessor(VilbertProcessor):
    """ERNIE-ViL's readers were adapted from ViLBERT's (2048-d features with the mean feature as region 0, 5-d
    normalized boxes), and the English models use the uncased BERT vocabulary shipped in the release archive
    (`vocab.txt`). See `VilbertProcessor`."""
