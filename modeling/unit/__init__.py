"""UniT (Hu & Singh, ICCV 2021): one encoder-decoder transformer trained on detection, VQA, visual entailment and
GLUE at once, with a CNN image encoder, a BERT text encoder and per-dataset queries and heads.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

# a shapes-world-sized task set: detection (gold boxes), VQA (soft scores), entailment
SMALL_TASKS = {
    "detection_shapes": dict(type="detection", task_index=0, num_queries=6, num_classes=8),
    "vqa_shapes": dict(type="vl", task_index=1, num_queries=2, num_labels=16, loss="binary_cross_entropy_with_logits"),
    "entailment_shapes": dict(type="vl", task_index=2, num_queries=2, num_labels=3, keep_only_cls=True),
}

SPECS = (
    ArchitectureSpec(
        name="unit",
        model_type="unit",
        package=__name__,
        config=".configuration_unit.UnitConfig",
        heads={Task.MULTITASK: Head(".modeling_unit.UnitForMultiTaskLearning")},
        inputs=InputKind.PIXELS,
        image_processor="hf_vlp.processing.cnn_images.CnnImageProcessor",
        vocab_size_field="text_config.vocab_size",
        small_sizes=dict(
            text_config=dict(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=64,
                initializer_range=0.08,
            ),
            tasks=SMALL_TASKS,
            backbone_layers=[1, 1, 1, 1],
            backbone_stem_channels=16,
            backbone_base_channels=8,
            backbone_dilation=False,
            backbone_frozen_stages=-1,
            encoder_hidden_size=64,
            decoder_hidden_size=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            ffn_size=128,
            max_task_num=8,
            max_image_task_num=8,
            initializer_range=0.08,
        ),
        # BERT's attention projections, the DETR layers' output projections and feed-forwards (their packed
        # in_proj is a parameter, not a module) and every dataset's head: PEFT's `modules_to_save` cannot take the
        # per-dataset ModuleDicts, so the heads get adapters too
        lora_target_modules=(
            r".*\.(attention\.self\.(query|key|value)|(self_attn|multihead_attn)\.out_proj|linear1|linear2)"
            r"|(.*\.)?(classifiers\.\w+\.(0\.dense|1)|class_embeds\.\w+|bbox_embeds\.\w+\.layers\.\d+)"
        ),
        example_inputs=".inputs_unit.example_inputs",
        bench_task=Task.MULTITASK,
    ),
)

_EXPORTS = {
    ".configuration_unit": ("DEFAULT_SAMPLING_RATIOS", "DEFAULT_TASKS", "UnitConfig"),
    ".modeling_unit": (
        "UnitForMultiTaskLearning",
        "UnitModel",
        "UnitModelOutput",
        "UnitMultiTaskOutput",
        "UnitPreTrainedModel",
    ),
    ".sampling_unit": ("UnitMultiTaskBatchSampler", "UnitMultiTaskTrainer", "collate_unit_batch"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
