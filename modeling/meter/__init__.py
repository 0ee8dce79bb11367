"""METER (Dou et al., CVPR 2022): config, model, heads and processor.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_meter."
# initializer_range follows the width (~1/sqrt(128)): see hf_vlp.recipes.SMALL_SIZES
_SMALL = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)

SPECS = (
    ArchitectureSpec(
        name="meter",
        model_type="meter",
        package=__name__,
        config=".configuration_meter.MeterConfig",
        heads={
            Task.BASE: Head(_M + "MeterModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
            Task.PRETRAINING: Head(
                _M + "MeterForPreTraining", auto_classes=("AutoModelForPreTraining",), pipeline_tag="feature-extraction"
            ),
            Task.VQA: Head(
                _M + "MeterForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            Task.ENTAILMENT: Head(
                _M + "MeterForVisualEntailment", config_overrides={"num_labels": 3}, num_labels_field="num_labels"
            ),
            # the second image of a pair takes token type 2
            Task.NLVR2: Head(
                _M + "MeterForVisualReasoning",
                config_overrides={"num_labels": 2, "modality_type_vocab_size": 3},
                num_labels_field="num_labels",
            ),
            Task.RETRIEVAL: Head(_M + "MeterForImageTextRetrieval"),
        },
        inputs=InputKind.PIXELS,
        processor=".processing_meter.MeterProcessor",
        image_processor=".processing_meter.MeterImageProcessor",
        vocab_size_field="text_config.vocab_size",
        small_sizes=dict(
            # RoBERTa with the shapes world's BERT-style specials ([PAD] 0, [CLS] 2, [SEP] 3)
            text_config=dict(
                _SMALL,
                model_type="roberta",
                vocab_size=64,
                max_position_embeddings=64,
                type_vocab_size=1,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                initializer_range=0.08,
            ),
            vision_config=dict(_SMALL, image_size=64, patch_size=16, initializer_factor=2.0),
            cross_modal_config=dict(_SMALL),
            initializer_range=0.08,
        ),
        # query / value of the text encoder, the CLIP tower and both fusion streams (self- and cross-attention)
        lora_target_modules=r".*\.(attention\.self|crossattention\.self)\.(query|value)|.*\.self_attn\.(q_proj|v_proj)",
        example_inputs=".inputs_meter.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_meter": ("MeterConfig", "MeterCrossModalConfig", "MeterVisionConfig"),
    ".modeling_meter": (
        "MeterForImageTextRetrieval",
        "MeterForPreTraining",
        "MeterForVisualEntailment",
        "MeterForVisualQuestionAnswering",
        "MeterForVisualReasoning",
        "MeterModel",
        "MeterModelOutput",
        "MeterPreTrainedModel",
    ),
    ".processing_meter": ("MeterImageProcessor", "MeterProcessor"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
