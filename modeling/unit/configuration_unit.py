"""UniT configuration. Defaults are the released UniT (Hu & Singh, ICCV 2021): MMF's
`projects/unit/configs/all_8_datasets/shared_dec.yaml` on top of `configs/models/unit/defaults.yaml` (ResNet-50 DC5,
a 6-layer 256-wide image encoder, BERT-base text, one shared 6-layer 768-wide decoder, task embeddings, 8 datasets).
"""

import copy
import re

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, PreTrainedConfig

TASK_TYPES = ("detection", "vl", "glue")
LOSS_TYPES = ("cross_entropy", "binary_cross_entropy_with_logits")

# dataset name -> task spec, as the released 8-dataset model (MMF `heads` + `num_queries` + `keep_only_bert_cls`)
DEFAULT_TASKS = {
    "detection_coco": dict(type="detection", task_index=0, num_queries=100, num_classes=91, use_attributes=False),
    "detection_visual_genome": dict(
        type="detection", task_index=1, num_queries=100, num_classes=1601, use_attributes=True
    ),
    "vqa2": dict(
        type="vl",
        task_index=3,
        num_queries=25,
        num_labels=3129,
        loss="binary_cross_entropy_with_logits",
        keep_only_cls=False,
        scale_loss_by_num_labels=True,
    ),
    "visual_entailment": dict(type="vl", task_index=9, num_queries=25, num_labels=3, keep_only_cls=True),
    "glue_qnli": dict(type="glue", task_index=5, num_queries=25, num_labels=2),
    "glue_mnli_mismatched": dict(type="glue", task_index=6, num_queries=25, num_labels=3),
    "glue_sst2": dict(type="glue", task_index=7, num_queries=25, num_labels=2),
    "glue_qqp": dict(type="glue", task_index=8, num_queries=25, num_labels=2),
}

# the released multi-task sampling ratios (all_8_datasets/shared_dec.yaml, `multitasking.params.sampling_ratios`)
DEFAULT_SAMPLING_RATIOS = {
    "detection_coco": 0.2,
    "detection_visual_genome": 0.07,
    "visual_entailment": 0.12,
    "vqa2": 0.26,
    "glue_qnli": 0.1,
    "glue_mnli_mismatched": 0.1,
    "glue_qqp": 0.1,
    "glue_sst2": 0.05,
}


def normalize_task(name, spec, max_task_num):
    """The task spec with every field present (defaults filled in); `ValueError` naming the field otherwise."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"`tasks`: a dataset name must be an identifier, got {name!r}.")
    if not isinstance(spec, dict):
        raise ValueError(f"`tasks[{name!r}]` must be a dict, got {type(spec).__name__}.")
    spec = dict(spec)
    kind = spec.get("type")
    if kind not in TASK_TYPES:
        raise ValueError(f"`tasks[{name!r}]['type']` must be one of {TASK_TYPES}, got {kind!r}.")
    allowed = {"type", "task_index", "num_queries"}
    if kind == "detection":
        allowed |= {"num_classes", "use_attributes"}
        spec.setdefault("use_attributes", False)
        required = ("task_index", "num_queries", "num_classes")
    else:
        allowed |= {"num_labels", "loss", "keep_only_cls", "scale_loss_by_num_labels"}
        spec.setdefault("loss", "cross_entropy")
        # MMF keeps the whole text for VQA and only [CLS] for entailment and GLUE (`keep_only_bert_cls`)
        spec.setdefault("keep_only_cls", kind == "glue")
        spec.setdefault("scale_loss_by_num_labels", False)
        if spec["loss"] not in LOSS_TYPES:
            raise ValueError(f"`tasks[{name!r}]['loss']` must be one of {LOSS_TYPES}, got {spec['loss']!r}.")
        required = ("task_index", "num_queries", "num_labels")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"`tasks[{name!r}]` has unknown field(s) {unknown} (a {kind} task takes {sorted(allowed)}).")
    for field in required:
        value = spec.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if field == "task_index" else 1):
            raise ValueError(
                f"`tasks[{name!r}][{field!r}]` must be a {'non-negative' if field == 'task_index' else 'positive'} int, got {value!r}."
            )
    if spec["task_index"] >= max_task_num:
        raise ValueError(
            f"`tasks[{name!r}]['task_index']` {spec['task_index']} must be below the task-embedding tables' rows "
            f"{max_task_num} (`max_task_num`, `max_image_task_num`)."
        )
    return spec


@strict
class UnitConfig(PreTrainedConfig):
    r"""
    Image encoder: a torchvision-layout ResNet (`backbone_*`; frozen batch norm, stem + `layer1` frozen as in
    MMF / DETR when the backbone trains, `backbone_dilation` = DC5), a 1x1 projection to `encoder_hidden_size`, DETR's
    sine positions and a post-norm (`pre_norm=False`) transformer encoder; `residual_in_encoder` adds the encoder's
    input to its output. Text encoder: BERT (`text_config`, a `BertConfig`) projected to `decoder_hidden_size`.
    Decoder: DETR decoder(s) over [image memory; text], one shared (`share_decoders`) or one per dataset, with
    `num_queries` learned query positions per dataset.

    Args:
        tasks: dataset name -> task spec. Every spec has `type` ("detection", "vl": image + text, "glue": text
            only), `task_index` (row of the task-embedding tables) and `num_queries`. Detection: `num_classes`
            (without no-object) and `use_attributes` (Visual Genome attribute loss). vl / glue: `num_labels`, `loss`
            ("cross_entropy" or "binary_cross_entropy_with_logits"), `keep_only_cls` (only the [CLS] state of the
            text enters the decoder; default True for glue, False for vl) and `scale_loss_by_num_labels` (MMF
            multiplies VQA v2's mean BCE by the answer count).
        use_task_embedding_in_img_encoder / use_task_embedding_in_lang_encoder: prepend the task's embedding to the
            image encoder input / the BERT input, removed after the encoder. The tables have `max_image_task_num`
            rows (MMF hard-codes 256) and `max_task_num` rows (MMF's `max_task_num`).
        set_cost_class, set_cost_bbox, set_cost_giou: Hungarian matching costs; `class_cost_log_softmax`: MMF's
            `use_bcl` matching cost on log-probabilities (its balanced class loss is not implemented).
        bbox_loss_coef, giou_loss_coef, attribute_loss_coef, eos_coef, aux_loss, detection_loss_weight: the set
            loss (class CE weight 1, no-object weight `eos_coef`, losses on every decoder layer with `aux_loss`).
        num_attributes, max_attributes: Visual Genome attribute vocabulary and attributes per box.
        predict_attributes: return attribute scores of the predicted class for attribute datasets.
        loss_on_all_hs: classification losses on every decoder layer's output (MMF's `loss_on_all_hs`).
    """

    model_type = "unit"
    sub_configs_defaults = {"text_config": BertConfig}

    text_config: dict | BertConfig | None = None
    tasks: dict | None = None
    backbone_block: str = "bottleneck"
    backbone_layers: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    backbone_stem_channels: int = 64
    backbone_base_channels: int = 64
    backbone_dilation: bool = True
    backbone_frozen_stages: int = 1
    encoder_hidden_size: int = 256
    decoder_hidden_size: int = 768
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    ffn_size: int = 2048
    dropout: float | int = 0.1
    activation: str = "relu"
    pre_norm: bool = False
    residual_in_encoder: bool = True
    share_decoders: bool = True
    use_task_embedding_in_img_encoder: bool = True
    use_task_embedding_in_lang_encoder: bool = True
    max_task_num: int = 256
    max_image_task_num: int = 256
    set_cost_class: float | int = 1.0
    set_cost_bbox: float | int = 5.0
    set_cost_giou: float | int = 2.0
    class_cost_log_softmax: bool = False
    bbox_loss_coef: float | int = 5.0
    giou_loss_coef: float | int = 2.0
    attribute_loss_coef: float | int = 1.0
    eos_coef: float | int = 0.1
    aux_loss: bool = True
    detection_loss_weight: float | int = 1.0
    num_attributes: int = 401
    max_attributes: int = 16
    predict_attributes: bool = False
    loss_on_all_hs: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = BertConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = BertConfig(**self.text_config)
        self.backbone_layers = [int(n) for n in self.backbone_layers]
        tasks = copy.deepcopy(DEFAULT_TASKS if self.tasks is None else self.tasks)
        if not isinstance(tasks, dict) or not tasks:
            raise ValueError(f"`tasks` must be a non-empty dict of dataset name -> task spec, got {self.tasks!r}.")
        self.tasks = {
            name: normalize_task(name, spec, min(self.max_task_num, self.max_image_task_num))
            for name, spec in tasks.items()
        }
        if self.encoder_hidden_size % 4:
            raise ValueError(
                f"`encoder_hidden_size` must be a multiple of 4 (sine positions), got {self.encoder_hidden_size}."
            )
        for field in ("encoder_hidden_size", "decoder_hidden_size"):
            if getattr(self, field) % self.num_heads:
                raise ValueError(
                    f"`{field}` {getattr(self, field)} must be a multiple of `num_heads` {self.num_heads}."
                )
        super().__post_init__(**kwargs)

    def task_names(self, kind=None):
        """The dataset names, or those of one task type."""
        return [name for name, spec in self.tasks.items() if kind is None or spec["type"] == kind]


__all__ = ["DEFAULT_SAMPLING_RATIOS", "DEFAULT_TASKS", "UnitConfig"]
