"""FILIP's processor: CLIP's tokenizer and image processor (the paper uses CLIP's BPE vocabulary, 77-token context
and 224 px ViT input) through transformers' `CLIPProcessor`, plus prompt texts for zero-shot classification."""

from transformers import CLIPProcessor

# the paper's template form (section 3.1.2): "[prefix] {label}, [category description]. [suffix]"
DEFAULT_TEMPLATES = ("a photo of a {}.",)


class FilipProcessor(CLIPProcessor):
    """`CLIPProcessor` returning exactly `FilipModel`'s inputs (a BERT-style tokenizer's `token_type_ids` are
    dropped: the CLIP text tower has no segments), and `prompt_texts` for zero-shot classification."""

    def __call__(self, images=None, text=None, **kwargs):
        kwargs.setdefault("return_tensors", "pt")
        encoded = super().__call__(images=images, text=text, **kwargs)
        encoded.pop("token_type_ids", None)
        return encoded

    @staticmethod
    def prompt_texts(class_names, templates=DEFAULT_TEMPLATES):
        """Class-major prompts (class c, template t at index c * len(templates) + t), the order
        `FilipForImageTextRetrieval.zero_shot_logits(..., num_templates=len(templates))` expects."""
        if isinstance(templates, str) or not templates or not all("{}" in t for t in templates):
            raise ValueError(f"`templates` must be a non-empty sequence of strings with a '{{}}', got {templates!r}")
        if isinstance(class_names, str) or not class_names:
            raise ValueError(f"`class_names` must be a non-empty sequence of names, got {class_names!r}")
        return [template.format(name) for name in class_names for template in templates]


__all__ = ["DEFAULT_TEMPLATES", "FilipProcessor"]
