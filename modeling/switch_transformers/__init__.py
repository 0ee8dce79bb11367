"""Switch Transformers (Fedus et al., JMLR 2022): transformers' model with the router z-loss and load-balancing loss
as separately logged objectives (docs/switch_transformers.md).

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code. transformers maps
SwitchTransformersConfig in AutoModelForSeq2SeqLM to its own class, which `import hf_vlp` leaves as it is: the hf_vlp
subclass takes it over only after `hf_vlp.use_hf_vlp_classes_for_transformers_models()`.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

SPECS = (
    ArchitectureSpec(
        name="switch_transformers",
        model_type="switch_transformers",
        package=__name__,
        config="transformers.SwitchTransformersConfig",
        heads={
            Task.SEQ2SEQ: Head(
                ".modeling_switch_transformers.SwitchTransformersForConditionalGeneration",
                opt_in_auto_classes=("AutoModelForSeq2SeqLM",),
                pipeline_tag="text2text-generation",
            ),
        },
        inputs=InputKind.TEXT,
        small_sizes=dict(
            vocab_size=64,
            d_model=128,
            d_kv=32,
            d_ff=256,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            num_experts=4,
            num_sparse_encoder_layers=1,
            num_sparse_decoder_layers=1,
            expert_capacity=64,
            decoder_start_token_id=0,
        ),
        # attention projections and expert / dense feed-forward layers of encoder and decoder
        lora_target_modules=r".*\.(SelfAttention|EncDecAttention)\.(q|k|v|o)$|.*\.(wi|wo)$",
        example_inputs=".inputs_switch_transformers.example_inputs",
        bench_task=Task.SEQ2SEQ,
    ),
)

_EXPORTS = {
    ".modeling_switch_transformers": (
        "LORA_TARGET_MODULES",
        "SwitchTransformersForConditionalGeneration",
        "SwitchTransformersSeq2SeqOutput",
        "router_losses",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
