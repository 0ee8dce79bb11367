"""Shared pieces of hf_vlp's configuration classes."""


class SavesLabelMaps:
    """Always write `id2label` / `label2id` into config.json.

    transformers leaves the label maps out of a saved config when they equal its own 2-label default, and restores 2
    labels on load. hf_vlp configs whose default head is larger (UNITER, ViLBERT, ERNIE-ViL: the 3129 VQA answers)
    would then reload a 2-label model with their own default instead; writing the maps makes every save round-trip.
    Put it before `PreTrainedConfig` in the bases."""

    def to_diff_dict(self):
        diff = super().to_diff_dict()
        if self.id2label is not None:
            diff["id2label"] = {str(key): value for key, value in self.id2label.items()}
            diff["label2id"] = dict(self.label2id or {value: key for key, value in self.id2label.items()})
        return diff
