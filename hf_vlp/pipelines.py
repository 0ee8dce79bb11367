"""transformers pipelines for hf_vlp's heads, registered with transformers' pipeline registry.

    from transformers import pipeline
    vqa = pipeline("visual-question-answering", model="path/to/uniter-vqa")   # its processor carries the detector
    vqa("photo.jpg", "what is the man holding?")   # [{"answer": "umbrella", "score": 0.93}, ...]

| task | heads (`hf_vlp.spec.Task`) | call | returns |
|---|---|---|---|
| `visual-question-answering` (alias `vqa`) | VQA, GQA: region models through the processor's detector; ViLT; BLIP (candidate ranking or generation) | `pipe(image, question, top_k=5)` | `[{"answer", "score"}]`, best first |
| `image-text-retrieval` | RETRIEVAL: ITM / ranking heads (UNITER, ViLBERT, ERNIE-ViL, Oscar, ViLT, BLIP) and contrastive ones (CLIP) | `pipe(image, texts=[...])` or `pipe(text, images=[...])` | `[{"text" or "image_index", "score"}]`, best first |
| `visual-grounding` | REFEXP (UNITER, ViLBERT, ERNIE-ViL); CPT zero-shot with a masked-LM head | `pipe(image, expression)` | `[{"box", "score", "index"}]`, best first |
| `image-to-text` | CAPTIONING (Oscar, BLIP) | `pipe(image)` | `[{"generated_text"}]` |

`image` is anything `hf_vlp.processing.images.load_image` takes (a path, a PIL image, a numpy array; grayscale and
RGBA are converted). Region models read the detector attached to their processor (saved in the model folder's
`detector/` subfolder, `RegionTextProcessor`) or the one passed as `pipeline(..., detector=...)`; the model's
feature size (`visual_feat_dim`, ...) is checked against the detector's before anything runs.

Registration is lazy (hf_vlp/registry.py): nothing is imported until transformers' `transformers.pipelines` is.
transformers 5 removed its `visual-question-answering` pipeline and redirects `image-to-text` to
`image-text-to-text`; after `import hf_vlp` these two names are hf_vlp's pipelines again, which load hf_vlp
architectures only (another model under `image-to-text` is refused with a pointer to `image-text-to-text`).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import AutoConfig
from transformers.pipelines.base import Pipeline

from .processing.images import detector_name, is_box_extractor, is_detector, load_image
from .spec import InputKind, Task

# pipeline task -> (the heads it runs, aliases)
PIPELINE_TASKS = {
    "visual-question-answering": ((Task.VQA, Task.GQA), ("vqa",)),
    "image-text-retrieval": ((Task.RETRIEVAL,), ()),
    "visual-grounding": ((Task.REFEXP,), ()),
    "image-to-text": ((Task.CAPTIONING,), ()),
}


# ------------------------------------------------------------------------------------------------------------------
# loading: the head of the saved architecture that serves the pipeline's task
# ------------------------------------------------------------------------------------------------------------------


def _head_for(config, tasks, pipeline_task, fallback_cpt=False):
    """(spec, task, head class) of the architecture of `config` for the first of `tasks` it has; the class named
    in `config.architectures` wins when it is one of those heads."""
    from .registry import ARCHITECTURES
    from .spec import names_class

    specs = [spec for spec in ARCHITECTURES.values() if spec.model_type == getattr(config, "model_type", None)]
    if not specs:
        hint = " (use 'image-text-to-text' for transformers' own models)" if pipeline_task == "image-to-text" else ""
        raise ValueError(
            f"the '{pipeline_task}' pipeline of hf_vlp runs hf_vlp architectures; model_type "
            f"{getattr(config, 'model_type', None)!r} is none of them{hint}"
        )
    candidates = [(spec, task) for spec in specs for task in tasks if task in spec.heads]
    if fallback_cpt:  # CPT grounds with a masked-LM head of any architecture CPT supports
        candidates += [(s, Task.PRETRAINING) for s in specs if s.cpt_adapter and Task.PRETRAINING in s.heads]
    if not candidates:
        raise ValueError(
            f"{specs[0].name} has no head for '{pipeline_task}' (it has {specs[0].tasks}; this pipeline runs "
            f"{[t.value for t in tasks]})"
        )
    saved = list(getattr(config, "architectures", None) or [])
    for spec, task in candidates:
        if any(names_class(spec.heads[task].model, cls) for cls in _saved_classes(spec, saved)):
            return spec, task, spec.model_class(task)
    spec, task = candidates[0]
    return spec, task, spec.model_class(task)


def _saved_classes(spec, names):
    classes = []
    for task in spec.heads:
        cls = spec.model_class(task)
        if cls.__name__ in names:
            classes.append(cls)
    return classes


def _loader(pipeline_task):
    tasks, _ = PIPELINE_TASKS[pipeline_task]

    class HeadLoader:
        """Loads the head of a saved hf_vlp architecture that serves this pipeline (transformers' `load_model`
        calls `from_pretrained` on each class of the task's `pt` tuple)."""

        @classmethod
        def from_pretrained(cls, name_or_path, **kwargs):
            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
            config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
            _, _, model_class = _head_for(
                config, tasks, pipeline_task, fallback_cpt=pipeline_task == "visual-grounding"
            )
            return model_class.from_pretrained(name_or_path, **kwargs)

    HeadLoader.__name__ = HeadLoader.__qualname__ = "HfVlp" + "".join(w.title() for w in pipeline_task.split("-"))
    return HeadLoader


# ------------------------------------------------------------------------------------------------------------------
# the shared base
# ------------------------------------------------------------------------------------------------------------------


class VisionLanguagePipeline(Pipeline):
    """What every hf_vlp pipeline shares: the head's spec, the processor, a detector for region models."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    tasks: tuple = ()

    def __init__(self, *args, detector=None, **kwargs):
        super().__init__(*args, **kwargs)
        from .registry import spec_for_model

        if self.processor is None:
            raise ValueError(f"the {self.task or type(self).__name__} pipeline needs the model's processor")
        self.spec = spec_for_model(self.model)
        self.head_task = self.spec.task_of(self.model)
        if self.is_region_model:
            self._check_region_setup(detector)

    @property
    def is_region_model(self) -> bool:
        return self.spec.inputs is InputKind.REGIONS

    def _check_region_setup(self, detector):
        """Record the model's feature size in the processor and check the detector against it (clear errors now,
        not a matmul crash later)."""
        regions = self.processor.image_processor
        expected = int(getattr(self.model.config, self.spec.feature_size_field))
        if regions.feature_dim is not None and int(regions.feature_dim) != expected:
            raise ValueError(
                f"the processor records {regions.feature_dim}-d region features but the model's "
                f"{self.spec.feature_size_field} is {expected}: they were not saved together"
            )
        regions.feature_dim = expected
        if detector is not None:
            self.processor.detector = detector  # checks the feature size
        elif self.processor.detector is None:
            raise ValueError(
                f"{self.spec.name} reads detector region features: pass `pipeline(..., detector=...)` (e.g. hf_vlp."
                "modeling.bottom_up.BottomUpDetector.from_pretrained(...)) or save the processor with its detector "
                "(`processor.detector = detector; processor.save_pretrained(model_dir)`)"
            )

    def _sanitize_parameters(self, **kwargs):
        return {}, {}, {}

    # ---- inputs ---------------------------------------------------------------------------------------------------

    def _regions(self, images):
        """The detector's regions of `images` (RGB PIL), as the processor computes them."""
        return self.processor.regions_from_images(images)

    def _region_batch(self, texts, regions, indices, **kwargs):
        """Processor inputs for `texts[i]` paired with image `indices[i]` of `regions` (detector run once)."""
        extra = dict(self.spec.heads[self.head_task].processor_kwargs) if self.head_task in self.spec.heads else {}
        detections = [regions["detections"][i] for i in indices]
        if hasattr(self.processor, "_detected_tags") and all("object_ids" in d for d in detections):
            extra["region_labels"] = self.processor._detected_tags(detections, self.processor.detector)
        return self.processor(
            text=texts,
            visual_feats=[regions["visual_feats"][i] for i in indices],
            boxes=[regions["boxes"][i] for i in indices],
            image_sizes=[regions["image_sizes"][i] for i in indices],
            **extra,
            **kwargs,
        )

    def _pixel_batch(self, texts, images):
        return self.processor(images=images, text=texts, padding=True, return_tensors="pt")


def _logits(outputs, *names):
    for name in (*names, "logits"):
        value = getattr(outputs, name, None) if not isinstance(outputs, dict) else outputs.get(name)
        if value is not None:
            return value
    return outputs[0]


# ------------------------------------------------------------------------------------------------------------------
# visual question answering
# ------------------------------------------------------------------------------------------------------------------


class VisualQuestionAnsweringPipeline(VisionLanguagePipeline):
    """`pipe(image, question, top_k=5)` -> `[{"answer", "score"}]`, best first; a list of images (or of
    `{"image", "question"}` dicts) gives one list per pair.

    Classifier heads score answers with the sigmoid of their logits (the VQA soft-score objective; softmax when
    `config.problem_type == "single_label_classification"`) and name them with `config.id2label`. BLIP ranks
    `candidate_answers` (or the answers of `config.id2label` when it holds a real answer list) by their decoder
    likelihood, as the original's `rank_answer`; without candidates it generates `top_k` answers by beam search and
    scores each by its sequence probability.
    """

    def __call__(self, image, question=None, **kwargs):
        return super().__call__(_pairs(image, question, "question"), **kwargs)

    def _sanitize_parameters(self, top_k=None, candidate_answers=None, max_new_tokens=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown arguments {sorted(kwargs)} (known: top_k, candidate_answers, max_new_tokens)")
        forward, post = {}, {}
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive int, got {top_k!r}")
            post["top_k"] = forward["top_k"] = top_k
        if candidate_answers is not None:
            if isinstance(candidate_answers, str) or not all(isinstance(a, str) for a in candidate_answers):
                raise ValueError("`candidate_answers` must be a list of strings")
            forward["candidate_answers"] = list(candidate_answers)
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return {}, forward, post

    def preprocess(self, inputs):
        image, question = _unpack(inputs, "question")
        if self.is_region_model:
            regions = self._regions([image])
            return dict(self._region_batch([question], regions, [0]))
        if self.spec.name == "blip":
            from .modeling.blip.processing_blip import pre_question

            question = pre_question(question)
        return dict(self._pixel_batch([question], [image]))

    def _forward(self, model_inputs, top_k=5, candidate_answers=None, max_new_tokens=10):
        if self.spec.name == "blip":
            return self._blip_answers(model_inputs, top_k, candidate_answers, max_new_tokens)
        if candidate_answers is not None:
            raise ValueError("`candidate_answers` apply to BLIP; classifier heads answer from config.id2label")
        outputs = self.model(**model_inputs)
        return {"logits": _logits(outputs, "question_answering_score")}

    def postprocess(self, model_outputs, top_k=5):
        if "answers" in model_outputs:  # BLIP: already ranked
            return model_outputs["answers"][:top_k]
        logits = model_outputs["logits"][0].float()
        single = getattr(self.model.config, "problem_type", None) == "single_label_classification"
        scores = logits.softmax(-1) if single else logits.sigmoid()
        labels = _id2label(self.model.config, logits.shape[-1])
        best = scores.topk(min(top_k, len(scores)))
        return [{"answer": labels[i], "score": float(s)} for s, i in zip(best.values.tolist(), best.indices.tolist())]

    def _blip_answers(self, inputs, top_k, candidate_answers, max_new_tokens):
        config = self.model.config
        if candidate_answers is None:
            labels = _id2label(config, None)
            real = labels and not all(label.startswith("LABEL_") for label in labels)
            candidate_answers = labels if real else None
        question = dict(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        )
        if candidate_answers is None:  # generate top_k answers, then score each one
            generated = self.model.generate(
                **question, num_beams=max(top_k, 1), num_return_sequences=top_k, max_new_tokens=max_new_tokens
            )
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            candidate_answers = list(dict.fromkeys(t.strip() for t in texts if t.strip())) or [""]
        tokens = self.tokenizer(candidate_answers, padding="longest", return_tensors="pt").to(self.device)
        ids = tokens["input_ids"]
        sep = self.tokenizer.sep_token_id
        if sep is not None and getattr(config.text_config, "eos_token_id", None) is not None:
            ids = ids.masked_fill(ids == sep, config.text_config.eos_token_id)
        ranking = self.model.rank_answers(
            **question, candidate_ids=ids, candidate_mask=tokens["attention_mask"], k=len(candidate_answers)
        )
        order = ranking.scores[0].argsort(descending=True)
        probabilities = ranking.scores[0].float().exp()  # each answer's sequence probability given the question
        answers = [
            {"answer": candidate_answers[int(ranking.topk_ids[0, j])], "score": float(probabilities[j])} for j in order
        ]
        return {"answers": answers}


def _id2label(config, size):
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    if size is None:
        return [id2label[i] for i in sorted(id2label)]
    if len(id2label) != size:
        return [id2label.get(i, f"LABEL_{i}") for i in range(size)]
    return [id2label[i] for i in range(size)]


# ------------------------------------------------------------------------------------------------------------------
# image-text retrieval
# ------------------------------------------------------------------------------------------------------------------


class ImageTextRetrievalPipeline(VisionLanguagePipeline):
    """`pipe(image, texts=[...])` ranks texts for an image; `pipe(text, images=[...])` ranks images for a text.
    Returns `[{"text", "score"}]` / `[{"image_index", "score"}]`, best first (`top_k` keeps the first k).

    Scores: ITM heads with two logits give the match probability (softmax); ranking heads with one score give it
    as is (comparable within one query only); contrastive models (CLIP) give the scaled cosine similarity.
    """

    def __call__(self, query, texts=None, images=None, **kwargs):
        if (texts is None) == (images is None):
            raise ValueError(
                "pass `texts=[...]` to rank texts for an image, or `images=[...]` to rank images for a text"
            )
        if texts is not None:
            if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError("`texts` must be a non-empty list of strings")
            return super().__call__({"image": query, "texts": list(texts)}, **kwargs)
        if not isinstance(query, str):
            raise ValueError(f"with `images`, the query must be a text, got {type(query).__name__}")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return super().__call__({"text": query, "images": images}, **kwargs)

    def _sanitize_parameters(self, top_k=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown arguments {sorted(kwargs)} (known: texts, images, top_k)")
        return {}, {}, ({"top_k": top_k} if top_k is not None else {})

    def preprocess(self, inputs):
        if "texts" in inputs:
            images, texts = [load_image(inputs["image"], "image")], inputs["texts"]
            image_index = [0] * len(texts)
        else:
            images = [load_image(image, "images", i) for i, image in enumerate(inputs["images"])]
            texts, image_index = [inputs["text"]] * len(images), list(range(len(images)))
        meta = {"texts": inputs.get("texts"), "count": len(texts)}
        if hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features"):  # contrastive
            queries = inputs["texts"] if "texts" in inputs else [inputs["text"]]  # each text and image encoded once
            batch = dict(self.processor(images=images, text=queries, padding=True, return_tensors="pt"))
            return {"batch": batch, "meta": {**meta, "contrastive": True}}
        if self.is_region_model:
            return {"batch": dict(self._region_batch(texts, self._regions(images), image_index)), "meta": meta}
        return {"batch": dict(self._pixel_batch(texts, [images[i] for i in image_index])), "meta": meta}

    def _forward(self, model_inputs):
        meta, batch = model_inputs["meta"], model_inputs["batch"]
        if meta.get("contrastive") and "return_loss" in inspect.signature(self.model.forward).parameters:
            batch = {**batch, "return_loss": False}  # hf_vlp's contrastive heads compute the loss by default
        outputs = self.model(**batch)
        if meta.get("contrastive"):
            per_image = _logits(outputs, "logits_per_image")  # (images, texts)
            scores = per_image[0] if meta["texts"] is not None else per_image[:, 0]
        else:
            logits = _logits(outputs, "itm_score")
            if logits.dim() == 2 and logits.shape[-1] == 2:
                scores = logits.float().softmax(-1)[:, 1]
            else:
                scores = logits.reshape(len(logits), -1)[:, 0]
        return {"scores": scores.float(), "meta": meta}

    def postprocess(self, model_outputs, top_k=None):
        scores, meta = model_outputs["scores"], model_outputs["meta"]
        order = scores.argsort(descending=True).tolist()[: top_k or None]
        if meta["texts"] is not None:
            return [{"text": meta["texts"][i], "score": float(scores[i])} for i in order]
        return [{"image_index": i, "score": float(scores[i])} for i in order]


# ------------------------------------------------------------------------------------------------------------------
# visual grounding
# ------------------------------------------------------------------------------------------------------------------


class VisualGroundingPipeline(VisionLanguagePipeline):
    """`pipe(image, expression)` -> `[{"box": {"xmin", "ymin", "xmax", "ymax"}, "score", "index"}]` in image
    pixels, best first (`top_k` keeps the first k; `boxes=[[x1, y1, x2, y2], ...]` scores given candidates).

    Referring-expression heads score the detector's regions (softmax over the image's regions; with ViLBERT's
    whole-image region 0 the whole image is a candidate too, as in the original). A masked-LM head of a model CPT
    supports grounds by colourful prompting (`hf_vlp.cpt.ground`, zero-shot): the candidates are `boxes` or the
    detector's regions, and the features of the painted copies are pooled at the candidate boxes, which needs a
    box-conditioned extractor (`extract(images, boxes)`) as the processor's detector; the scores are the softmax
    over the candidates of CPT's colour-word logits.
    """

    def __call__(self, image, expression=None, **kwargs):
        return super().__call__(_pairs(image, expression, "expression"), **kwargs)

    def _sanitize_parameters(self, top_k=None, boxes=None, **kwargs):
        if kwargs:
            raise ValueError(f"unknown arguments {sorted(kwargs)} (known: top_k, boxes)")
        pre = {"boxes": boxes} if boxes is not None else {}
        return pre, {}, ({"top_k": top_k} if top_k is not None else {})

    @property
    def uses_cpt(self) -> bool:
        return self.head_task is Task.PRETRAINING

    def preprocess(self, inputs, boxes=None):
        image, expression = _unpack(inputs, "expression")
        width, height = image.size
        if self.uses_cpt:
            return {"cpt": (image, expression, boxes)}
        if boxes is not None:
            regions = self.processor.regions_from_images([image], boxes=[np.asarray(boxes, np.float32)])
        else:
            regions = self._regions([image])
        batch = dict(self._region_batch([expression], regions, [0]))
        return {"batch": batch, "size": (width, height)}

    def _forward(self, model_inputs):
        if "cpt" in model_inputs:
            return self._cpt(*model_inputs["cpt"])
        batch = model_inputs["batch"]
        logits = _logits(self.model(**batch)).float()[0]
        mask = batch["visual_attention_mask"][0].bool()
        scores = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        width, height = model_inputs["size"]
        boxes = batch["visual_pos"][0, :, :4].float() * torch.tensor([width, height, width, height])
        return {"scores": scores[mask], "boxes": boxes[mask]}

    def _cpt(self, image, expression, boxes):
        from .cpt import CptProcessor, ground

        extractor = self.processor.detector
        if not is_box_extractor(extractor):
            raise ValueError(
                "CPT grounding pools features of painted copies at the candidate boxes: the processor's detector must "
                f"have `extract(images, boxes)`; {detector_name(extractor)} has not"
            )
        if boxes is None:
            if not is_detector(extractor):
                raise ValueError("pass candidate `boxes=[[x1, y1, x2, y2], ...]` (the extractor proposes none)")
            boxes = self._regions([image])["boxes"][0]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        result = ground(
            self.model, CptProcessor(self.tokenizer), image, boxes, expression, extractor, box_format="xyxy"
        )
        return {"scores": result.scores.float().softmax(-1), "boxes": torch.as_tensor(boxes, dtype=torch.float32)}

    def postprocess(self, model_outputs, top_k=None):
        scores, boxes = model_outputs["scores"], model_outputs["boxes"]
        order = scores.argsort(descending=True).tolist()[: top_k or None]
        keys = ("xmin", "ymin", "xmax", "ymax")
        return [
            {"score": float(scores[i]), "box": dict(zip(keys, (float(v) for v in boxes[i]))), "index": i} for i in order
        ]


# ------------------------------------------------------------------------------------------------------------------
# captioning
# ------------------------------------------------------------------------------------------------------------------


class ImageToTextPipeline(VisionLanguagePipeline):
    """`pipe(image, max_new_tokens=20, **generate_kwargs)` -> `[{"generated_text"}]`: BLIP from pixels, Oscar from
    the detector's regions and object tags (`generate` from [CLS], as the original)."""

    def __call__(self, images, **kwargs):
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(self, max_new_tokens=None, prompt=None, **generate_kwargs):
        forward = dict(generate_kwargs)
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return ({"prompt": prompt} if prompt is not None else {}), forward, {}

    def preprocess(self, image, prompt=None):
        image = load_image(image, "images")
        if self.is_region_model:
            regions = self._regions([image])
            return dict(self._region_batch(None, regions, [0]))
        if prompt is not None:
            return dict(self.processor(images=[image], text=[prompt], return_tensors="pt"))
        return dict(self.processor(images=[image], return_tensors="pt"))

    def _forward(self, model_inputs, **generate_kwargs):
        generate_kwargs.setdefault("max_new_tokens", 20)
        return {"sequences": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.tokenizer.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


# ------------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------------


def _pairs(image, text, name):
    """The pipeline input(s) for `pipe(image, text)`: a dict, or a list of dicts for lists."""
    if text is None:
        if isinstance(image, dict) or (isinstance(image, list) and all(isinstance(i, dict) for i in image)):
            return image
        raise ValueError(f"pass `{name}` (a string) with the image, or {{'image': ..., '{name}': ...}} dicts")
    if isinstance(image, list) or isinstance(text, list):
        images = image if isinstance(image, list) else [image] * len(text)
        texts = text if isinstance(text, list) else [text] * len(images)
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} `{name}`s: one per image")
        return [{"image": i, name: t} for i, t in zip(images, texts)]
    return {"image": image, name: text}


def _unpack(inputs, name):
    if not isinstance(inputs, dict) or "image" not in inputs or name not in inputs:
        raise ValueError(f"each input must be {{'image': ..., '{name}': ...}}, got {type(inputs).__name__}")
    if not isinstance(inputs[name], str) or not inputs[name].strip():
        raise ValueError(f"`{name}` must be a non-empty string, got {inputs[name]!r}")
    return load_image(inputs["image"], "image"), inputs[name]


# ------------------------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------------------------

_IMPLEMENTATIONS = {
    "visual-question-answering": VisualQuestionAnsweringPipeline,
    "image-text-retrieval": ImageTextRetrievalPipeline,
    "visual-grounding": VisualGroundingPipeline,
    "image-to-text": ImageToTextPipeline,
}


def register_pipelines(pipelines_module=None) -> None:
    """Enter hf_vlp's pipelines in transformers' registry (idempotent; called by hf_vlp.registry when
    `transformers.pipelines` is imported)."""
    if pipelines_module is None:
        import transformers.pipelines as pipelines_module

    registry = pipelines_module.PIPELINE_REGISTRY
    for task, (_, aliases) in PIPELINE_TASKS.items():
        registry.supported_tasks[task] = {
            "impl": _IMPLEMENTATIONS[task],
            "pt": (_loader(task),),
            "default": {},
            "type": "multimodal",
        }
        for alias in aliases:
            registry.task_aliases[alias] = task
        for name in (task, *aliases):  # transformers 5 lists the VQA names as removed tasks
            getattr(pipelines_module, "REMOVED_TASKS", {}).pop(name, None)
    resolve = getattr(pipelines_module, "_resolve_deprecated_task", None)
    if resolve is not None and not getattr(resolve, "_hf_vlp", False):

        def resolve_task(task: str) -> str:
            """transformers' task redirects, except for the tasks hf_vlp registers (`image-to-text`)."""
            return task if task in PIPELINE_TASKS else resolve(task)

        resolve_task._hf_vlp = True
        pipelines_module._resolve_deprecated_task = resolve_task


__all__ = [
    "PIPELINE_TASKS",
    "ImageTextRetrievalPipeline",
    "ImageToTextPipeline",
    "VisionLanguagePipeline",
    "VisualGroundingPipeline",
    "VisualQuestionAnsweringPipeline",
    "register_pipelines",
]
