"""ERNIE-ViL (Yu et al., AAAI 2021) — a variant of ViLBERT: config, model, pretraining with scene-graph prediction,
task heads, processor and scene-graph targets."""

from hf_vlp.processing.region import RegionFeatureProcessor
from hf_vlp.registry import register_architecture

from .configuration_ernie_vil import ErnieVilConfig
from .modeling_ernie_vil import (
    ErnieVilForImageTextRetrieval,
    ErnieVilForMultipleChoice,
    ErnieVilForPreTraining,
    ErnieVilForReferringExpression,
    ErnieVilForVisualQuestionAnswering,
    ErnieVilModel,
    ErnieVilPreTrainedModel,
)
from .processing_ernie_vil import ErnieVilProcessor
from .scene_graph import (
    DataCollatorForErnieVilPretraining,
    SceneGraph,
    SceneGraphTargetBuilder,
    SpacySceneGraphParser,
    parse_scene_graph,
)

register_architecture(
    "ernie_vil",
    ErnieVilConfig,
    models={
        "AutoModel": ErnieVilModel,
        "AutoModelForPreTraining": ErnieVilForPreTraining,
        "AutoModelForVisualQuestionAnswering": ErnieVilForVisualQuestionAnswering,
        "AutoModelForMultipleChoice": ErnieVilForMultipleChoice,
    },
    heads={
        "pretraining": ErnieVilForPreTraining,
        "vqa": ErnieVilForVisualQuestionAnswering,
        "vcr": ErnieVilForMultipleChoice,
        "retrieval": ErnieVilForImageTextRetrieval,
        "refexp": ErnieVilForReferringExpression,
    },
    processor_class=ErnieVilProcessor,
    image_processor_class=RegionFeatureProcessor,
)

__all__ = [
    "DataCollatorForErnieVilPretraining",
    "ErnieVilConfig",
    "ErnieVilForImageTextRetrieval",
    "ErnieVilForMultipleChoice",
    "ErnieVilForPreTraining",
    "ErnieVilForReferringExpression",
    "ErnieVilForVisualQuestionAnswering",
    "ErnieVilModel",
    "ErnieVilPreTrainedModel",
    "ErnieVilProcessor",
    "SceneGraph",
    "SceneGraphTargetBuilder",
    "SpacySceneGraphParser",
    "parse_scene_graph",
]
