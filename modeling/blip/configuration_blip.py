"""BLIP configuration: transformers' `BlipConfig`, filled with the values of the original release
(github.com/salesforce/BLIP), plus the pretraining fields hf_vlp adds.

hf_vlp does not define its own config class for BLIP: Hub checkpoints of transformers (`Salesforce/blip-*`) load into
the hf_vlp heads unchanged. What transformers' defaults get wrong for the original models is set here and by the
converter (see docs/blip.md):
  * vision LayerNorm eps 1e-6 (timm ViT of the original; transformers' default is 1e-5, ~1e-4 off),
  * text `eos_token_id` 102 (`[SEP]` ends every text; transformers' default 2 is `[unused1]`),
  * `label_smoothing` 0.1 (med.py's `BertLMHeadModel` always smooths),
  * dropout 0.1 in the text transformer (configs/med_config.json),
  * vision initializer_range 0.02 for models trained from scratch (timm ViT; transformers' default is 1e-10).

Pretraining fields (read with `pretraining_setting`, absent from Hub configs, defaults = configs/pretrain.yaml):
  enc_token_id: `[ENC]`, put at position 0 of the text for the image-grounded encoder (ITM).
  use_momentum_distillation: ITC with momentum encoders + feature queues + soft targets (paper sec. 3.2, from
    ALBEF); False gives plain in-batch InfoNCE gathered over all ranks.
  momentum: EMA factor of the momentum encoders (0.995).
  queue_size: length of the image / text feature queues (57600); must be >= 0.
  alpha: weight of the momentum model's soft targets in ITC (0.4).
  itc_temperature: initial ITC temperature (0.07), learned and clamped to [0.001, 0.5].
  itm_hard_negatives: sample ITM negatives from the ITC similarities (True) or uniformly (False).
  itc_weight, itm_weight, lm_weight: weights of each loss in the summed `loss` (1, 1, 1 in pretrain.py).
"""

from transformers import BlipConfig

PRETRAINING_DEFAULTS = dict(
    enc_token_id=30523,
    use_momentum_distillation=True,
    momentum=0.995,
    queue_size=57600,
    alpha=0.4,
    itc_temperature=0.07,
    itm_hard_negatives=True,
    itc_weight=1.0,
    itm_weight=1.0,
    lm_weight=1.0,
)

VISION_SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

# configs/med_config.json (bert-base-uncased + [DEC] and [ENC])
TEXT_DEFAULTS = dict(
    vocab_size=30524,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-12,
    bos_token_id=30522,
    pad_token_id=0,
    sep_token_id=102,
    eos_token_id=102,
    label_smoothing=0.1,
)


def pretraining_setting(config, name):
    """A pretraining field of a BlipConfig, or its default when the config (e.g. from the Hub) lacks it."""
    if name not in PRETRAINING_DEFAULTS:
        raise ValueError(f"unknown BLIP pretraining setting {name!r}; known: {sorted(PRETRAINING_DEFAULTS)}")
    value = getattr(config, name, None)
    return PRETRAINING_DEFAULTS[name] if value is None else value


def blip_config(size="base", image_size=224, embed_dim=256, vision=None, text=None, **extra) -> BlipConfig:
    """A `BlipConfig` equal to the original model of `size` ("base": ViT-B/16, "large": ViT-L/16; both with a
    BERT-base text transformer). `image_size`: 224 for pretraining, 384 captioning/retrieval, 480 VQA.
    `embed_dim`: ITC projection size (256). `vision` / `text` override sub-config fields; `extra` sets top-level
    fields, e.g. the pretraining settings of `PRETRAINING_DEFAULTS` (queue_size=...)."""
    if size not in VISION_SIZES:
        raise ValueError(f"`size` must be one of {sorted(VISION_SIZES)}, got {size!r}")
    unknown = set(extra) - set(PRETRAINING_DEFAULTS) - {"tie_word_embeddings", "initializer_range"}
    if unknown:
        raise ValueError(
            f"unknown BLIP config field(s) {sorted(unknown)}; pretraining fields: {sorted(PRETRAINING_DEFAULTS)}"
        )
    # timm ViT initialisation (std 0.02); transformers' BlipVisionConfig default 1e-10 leaves a fresh vision tower
    # with ~0 weights, whose final LayerNorm then blows gradients up
    vision_config = dict(
        VISION_SIZES[size],
        image_size=image_size,
        patch_size=16,
        layer_norm_eps=1e-6,
        projection_dim=embed_dim,
        initializer_range=0.02,
    )
    vision_config.update(vision or {})
    text_config = dict(TEXT_DEFAULTS, projection_dim=embed_dim)
    text_config.update(text or {})
    settings = {**PRETRAINING_DEFAULTS, **extra}
    return BlipConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=embed_dim,
        image_text_hidden_size=embed_dim,
        label_smoothing=text_config["label_smoothing"],
        **settings,
    )
