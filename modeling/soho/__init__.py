"""SOHO (Huang et al., CVPR 2021): end-to-end vision-language pretraining from pixels with a visual dictionary.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_soho."

SPECS = (
    ArchitectureSpec(
        name="soho",
        model_type="soho",
        package=__name__,
        config=".configuration_soho.SohoConfig",
        heads={
            Task.BASE: Head(_M + "SohoModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "SohoForPreTraining", auto_classes=("AutoModelForPreTraining",), pipeline_tag="feature-extraction"
            ),
            Task.VQA: Head(
                _M + "SohoForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
        },
        inputs=InputKind.PIXELS,
        processor=".processing_soho.SohoProcessor",
        image_processor=".processing_soho.SohoImageProcessor",
        # a ResNet-18 a quarter as wide and a 3-layer 128-wide encoder; initializer_range follows the width
        # (~1/sqrt(128)), see hf_vlp.recipes.SMALL_SIZES
        small_sizes=dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=40,
            backbone_stem_channels=16,
            backbone_base_channels=16,
            num_visual_tokens=64,
            initializer_range=0.08,
        ),
        # self-attention projections of every encoder layer
        lora_target_modules=r".*\.attention\.self\.(query|key|value)",
        example_inputs=".inputs_soho.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_soho": ("SohoConfig",),
    ".modeling_soho": (
        "SohoForPreTraining",
        "SohoForPreTrainingOutput",
        "SohoForVisualQuestionAnswering",
        "SohoModel",
        "SohoModelOutput",
        "SohoPreTrainedModel",
        "SohoVisualDictionary",
        "SohoVisualEmbeddings",
        "SohoVisualQuestionAnsweringOutput",
    ),
    ".processing_soho": ("SohoImageProcessor", "SohoProcessor"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
