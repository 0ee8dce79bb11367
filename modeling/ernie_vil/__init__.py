"""ERNIE-ViL (Yu et al., AAAI 2021) — a variant of ViLBERT: config, model, pretraining with scene-graph prediction,
task heads, processor and scene-graph targets.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_ernie_vil."

SPECS = (
    ArchitectureSpec(
        name="ernie_vil",
        model_type="ernie_vil",
        package=__name__,
        config=".configuration_ernie_vil.ErnieVilConfig",
        heads={
            Task.BASE: Head(_M + "ErnieVilModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "ErnieVilForPreTraining",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                _M + "ErnieVilForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            Task.VCR: Head(_M + "ErnieVilForMultipleChoice", auto_classes=("AutoModelForMultipleChoice",)),
            Task.RETRIEVAL: Head(_M + "ErnieVilForImageTextRetrieval"),
            Task.REFEXP: Head(_M + "ErnieVilForReferringExpression"),
        },
        inputs=InputKind.REGIONS,
        processor=".processing_ernie_vil.ErnieVilProcessor",
        image_processor="hf_vlp.processing.region.RegionFeatureProcessor",
        feature_size_field="v_feature_size",
        region_classes_field="class_size",
        small_sizes=dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=256,
            v_hidden_size=128,
            v_num_hidden_layers=3,
            v_num_attention_heads=4,
            v_intermediate_size=256,
            co_hidden_size=128,
            co_num_attention_heads=4,
            co_intermediate_size=256,
            initializer_range=0.08,  # follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
        ),
        # as ViLBERT: query and value of every attention of the text, visual and co-attention stacks
        lora_target_modules=(
            r".*encoder\.(layer|v_layer)\.\d+\.attention\.self\.(query|value)"
            r"|.*encoder\.c_layer\.\d+\.(text|visual)_attention\.self\.(query|value)"
        ),
        # pretraining batches need scene-graph targets: DataCollatorForErnieVilPretraining (docs/ernie_vil.md)
        example_inputs="hf_vlp.modeling.vilbert.inputs_vilbert.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_ernie_vil": ("ErnieVilConfig",),
    ".modeling_ernie_vil": (
        "ErnieVilForImageTextRetrieval",
        "ErnieVilForMultipleChoice",
        "ErnieVilForPreTraining",
        "ErnieVilForReferringExpression",
        "ErnieVilForVisualQuestionAnswering",
        "ErnieVilModel",
        "ErnieVilPreTrainedModel",
    ),
    ".processing_ernie_vil": ("ErnieVilProcessor",),
    ".scene_graph": (
        "DataCollatorForErnieVilPretraining",
        "SceneGraph",
        "SceneGraphTargetBuilder",
        "SpacySceneGraphParser",
        "parse_scene_graph",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
