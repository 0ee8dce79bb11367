"""CPT — Colorful Prompt Tuning (Yao et al. 2021): zero-shot and few-shot visual grounding, relation prediction and
answer scoring with any masked-LM vision-language model of hf_vlp.

    from hf_vlp import cpt
    from hf_vlp.processing.cpt import CptProcessor

    processor = CptProcessor(tokenizer)                      # red blocks, "<caption> is in [MASK] color."
    result = cpt.ground(model, processor, image, boxes, "woman in orange suit", labels=tags,
                        region_features=RegionFeatureExtractor.default())
    result.best_index, result.scores

Modules: `adapters` (what CPT needs from a model, per architecture: `get_cpt_adapter(name)`), `scoring` (the scores
of the authors' evaluation code), `tuning` (few-shot tuning with `Trainer`), `cli` (`hf-vlp cpt ground`). The
processing half (colours, painting, prompts, tokens) is `hf_vlp.processing.cpt`.
"""

from ..processing.cpt import CptProcessor, PaintedCopy, color_token_id, to_rgb_array
from .adapters import (
    ADAPTERS,
    CptAdapter,
    CptAdapterSpec,
    OscarAdapter,
    SpecAdapter,
    UniterAdapter,
    adapter_for,
    get_cpt_adapter,
    register_adapter,
    register_cpt_adapter,
)
from .cli import add_cli, run_cli
from .scoring import (
    GROUNDING_METHODS,
    PREDICATE_REWRITES,
    GroundingInputs,
    GroundingResult,
    answer_first_piece_scores,
    answer_scores,
    candidate_scores,
    ground,
    grounding_inputs,
    grounding_scores,
    mask_logits,
    predicate_scores,
    predicate_token_ids,
    predict_relation,
    region_inputs,
    relation_inputs,
    relation_scores,
)
from .tuning import (
    CptDataCollator,
    CptForMaskedLM,
    CptMaskedLMOutput,
    few_shot_training_arguments,
    grounding_training_rows,
    tune,
)

__all__ = [
    "ADAPTERS",
    "GROUNDING_METHODS",
    "PREDICATE_REWRITES",
    "CptAdapter",
    "CptAdapterSpec",
    "CptDataCollator",
    "CptForMaskedLM",
    "CptMaskedLMOutput",
    "CptProcessor",
    "GroundingInputs",
    "GroundingResult",
    "OscarAdapter",
    "PaintedCopy",
    "SpecAdapter",
    "UniterAdapter",
    "adapter_for",
    "add_cli",
    "answer_first_piece_scores",
    "answer_scores",
    "candidate_scores",
    "color_token_id",
    "few_shot_training_arguments",
    "get_cpt_adapter",
    "ground",
    "grounding_inputs",
    "grounding_scores",
    "grounding_training_rows",
    "mask_logits",
    "predicate_scores",
    "predicate_token_ids",
    "predict_relation",
    "region_inputs",
    "register_adapter",
    "register_cpt_adapter",
    "relation_inputs",
    "relation_scores",
    "run_cli",
    "to_rgb_array",
    "tune",
]
