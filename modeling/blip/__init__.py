"""BLIP (Li et al., ICML 2022): transformers' Blip classes with the original pretraining objectives, retrieval
re-ranking, VQA answer ranking and fixes of transformers' deviations (docs/blip.md).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code. transformers maps BlipConfig in
AutoModelForVisualQuestionAnswering / AutoModelForImageTextToText to its own classes, which `import hf_vlp` leaves as
they are: the hf_vlp subclasses (same weights, fixed cross-attention mask, original losses) take those over only
after `hf_vlp.use_hf_vlp_classes_for_transformers_models()`.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_blip."
_SMALL = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256)

SPECS = (
    ArchitectureSpec(
        name="blip",
        model_type="blip",
        package=__name__,
        config="transformers.BlipConfig",
        heads={
            Task.PRETRAINING: Head(
                _M + "BlipForPreTraining", auto_classes=("AutoModelForPreTraining",), pipeline_tag="feature-extraction"
            ),
            Task.VQA: Head(
                _M + "BlipForQuestionAnswering",
                opt_in_auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
            ),
            Task.CAPTIONING: Head(
                _M + "BlipForConditionalGeneration",
                opt_in_auto_classes=("AutoModelForImageTextToText",),
                pipeline_tag="image-to-text",
            ),
            Task.RETRIEVAL: Head(_M + "BlipForImageTextRetrieval"),
            Task.NLVR2: Head(_M + "BlipForVisualReasoning"),
        },
        inputs=InputKind.PIXELS,
        processor="transformers.BlipProcessor",
        vocab_size_field="text_config.vocab_size",
        # the fields `blip_config` sets for a model trained from scratch (LayerNorm eps 1e-6), with BERT-style special
        # ids of small vocabularies ([PAD] 0, [UNK] 1 as [ENC], [CLS] 2 as [DEC], [SEP] 3). Init 0.08 ~ 1/sqrt(128) in
        # both towers (each reads its own initializer_range: the vision tower for its Linears, the patch Conv2d, the
        # position and class embeddings; the text encoder / decoder for theirs), not the 768-wide model's 0.02, as
        # hf_vlp.recipes.SMALL_SIZES
        small_sizes=dict(
            vision_config=dict(
                _SMALL, image_size=64, patch_size=16, layer_norm_eps=1e-6, initializer_range=0.08, projection_dim=64
            ),
            text_config=dict(
                _SMALL,
                vocab_size=64,
                max_position_embeddings=64,
                bos_token_id=2,
                pad_token_id=0,
                sep_token_id=3,
                eos_token_id=3,
                projection_dim=64,
                label_smoothing=0.1,
                initializer_range=0.08,
            ),
            projection_dim=64,
            image_text_hidden_size=64,
            initializer_range=0.08,  # the heads on top of both towers (ITM, ITC projections)
            enc_token_id=1,
            queue_size=64,
        ),
        lora_target_modules=r"^(vision_model|text_encoder|text_decoder)\..*\.(qkv|projection|query|key|value)$",
        example_inputs=".inputs_blip.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".configuration_blip": ("PRETRAINING_DEFAULTS", "blip_config", "pretraining_setting"),
    ".modeling_blip": (
        "LORA_TARGET_MODULES",
        "BlipAnswerRanking",
        "BlipForConditionalGeneration",
        "BlipForImageTextRetrieval",
        "BlipForVisualReasoning",
        "BlipForVisualReasoningOutput",
        "BlipForPreTraining",
        "BlipForPreTrainingOutput",
        "BlipForQuestionAnswering",
        "BlipQuestionAnsweringOutput",
        "BlipRetrievalScores",
        "BlipTextCrossAttentionWithMask",
        "mask_cross_attention_padding",
        "with_first_token",
    ),
    ".processing_blip": ("build_blip_processor", "pre_caption", "pre_question"),
    "transformers": ("BlipConfig",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
