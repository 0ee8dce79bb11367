"""SimVLM (Wang et al., ICLR 2022): a convolutional stem + encoder-decoder transformer trained with PrefixLM alone,
implemented from the paper (no code or weights were released; docs/simvlm.md).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

_M = ".modeling_simvlm."

SPECS = (
    ArchitectureSpec(
        name="simvlm",
        model_type="simvlm",
        package=__name__,
        config=".configuration_simvlm.SimVlmConfig",
        heads={
            # PrefixLM pretraining, captioning and prompting are one model: the prefix differs, not the head
            Task.PRETRAINING: Head(
                _M + "SimVlmForConditionalGeneration",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="image-to-text",
            ),
            Task.CAPTIONING: Head(
                _M + "SimVlmForConditionalGeneration",
                auto_classes=("AutoModelForImageTextToText",),
                pipeline_tag="image-to-text",
            ),
            Task.VQA: Head(
                _M + "SimVlmForVisualQuestionAnswering",
                auto_classes=("AutoModelForVisualQuestionAnswering",),
                pipeline_tag="visual-question-answering",
            ),
            Task.BASE: Head(_M + "SimVlmModel", auto_classes=("AutoModel",), pipeline_tag="feature-extraction"),
        },
        inputs=InputKind.PIXELS,
        processor=".processing_simvlm.SimVlmProcessor",
        vocab_size_field="vocab_size",
        # a model that trains in minutes on a CPU: 64 px images (a 4 x 4 patch grid from a 16-wide one-block-per-stage
        # stem), BERT-style special ids of small vocabularies ([PAD] 0, [CLS] 2 starts the decoder, [SEP] 3 ends)
        small_sizes=dict(
            hidden_size=128,
            intermediate_size=256,
            num_attention_heads=4,
            num_encoder_layers=3,
            num_decoder_layers=3,
            vocab_size=64,
            max_position_embeddings=64,
            image_size=64,
            conv_stem_width=16,
            conv_stage_depths=[1, 1, 1],
            conv_num_groups=8,
            pad_token_id=0,
            decoder_start_token_id=2,
            eos_token_id=3,
        ),
        lora_target_modules=(
            r"(model\.)?(encoder|decoder)\.layers\.\d+\.(self_attn|cross_attn)\.(q_proj|k_proj|v_proj|out_proj)"
        ),
        example_inputs=".inputs_simvlm.example_inputs",
        bench_task=Task.CAPTIONING,
    ),
)

_EXPORTS = {
    ".configuration_simvlm": ("SIZES", "SimVlmConfig", "simvlm_config"),
    ".modeling_simvlm": (
        "LORA_TARGET_MODULES",
        "SimVlmClassifierOutput",
        "SimVlmForConditionalGeneration",
        "SimVlmForVisualQuestionAnswering",
        "SimVlmForVisualQuestionAnsweringClassifier",
        "SimVlmModel",
        "SimVlmPreTrainedModel",
        "causal_decoder_mask",
        "encoder_padding_mask",
        "shift_tokens_right",
    ),
    ".prefix_lm": ("PrefixLmCollator", "prefix_lm_split"),
    ".processing_simvlm": ("CAPTION_PROMPT", "SimVlmProcessor", "build_simvlm_processor"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
