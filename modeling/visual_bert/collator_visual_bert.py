"""VisualBERT pre-training batches from the shared `DataCollatorForVLPretraining`.

The original (`visualbert/dataloaders/coco_dataset.py`, `pytorch_pretrained_bert/fine_tuning.py::random_word`)
trains two objectives: masked language modelling on the text (15 %: 80 % [MASK], 10 % random, 10 % kept) and
sentence-image prediction. This adapter maps them onto the shared collator's MLM and in-batch matching negatives
with transformers' argument names (`labels`, `sentence_image_labels`, 1 = match) and, like the original, masks
words in mismatched pairs too (the shared collator's UNITER-style conditional masking masks matching pairs only).

Difference from the original data: its negatives pair the image's caption with a second caption of the same or of
another image (`[CLS] A [SEP] B [SEP]`); here an example's image is swapped for another example's (one caption per
example). The head and the loss are the same.
"""

from dataclasses import dataclass

import torch

from hf_vlp.pretraining.collators import DataCollatorForVLPretraining

VISUAL_BERT_OBJECTIVES = ("mlm", "itm")


@dataclass
class VisualBertPretrainingCollator(DataCollatorForVLPretraining):
    """Rows with text + region features (+ boxes) -> `VisualBertForPreTraining` keyword arguments.

    `processor` must be a `VisualBertProcessor` (it returns `visual_embeds`).
    """

    objectives: tuple = VISUAL_BERT_OBJECTIVES
    mask_mismatched_text: bool = True

    def __post_init__(self):
        unknown = set(self.objectives) - set(VISUAL_BERT_OBJECTIVES)
        if unknown:
            raise ValueError(
                f"VisualBERT pre-trains with {VISUAL_BERT_OBJECTIVES} only; "
                f"got unsupported objectives {sorted(unknown)}"
            )
        self.label_names = {"mlm": "labels", "itm": "sentence_image_labels", **self.label_names}
        super().__post_init__()

    def __call__(self, rows):
        batch = super().__call__(rows)
        mlm, itm = self.label_names["mlm"], self.label_names["itm"]
        if self.mask_mismatched_text and mlm in batch and itm in batch:
            mismatched = batch[itm] == 0
            if mismatched.any():
                input_ids, labels = self._mask_tokens(batch["input_ids"], batch.get("attention_mask"), mismatched)
                batch["input_ids"] = torch.where(mismatched[:, None], input_ids, batch["input_ids"])
                batch[mlm] = torch.where(mismatched[:, None], labels, batch[mlm])
        return batch
