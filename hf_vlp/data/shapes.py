"""The "shapes world": procedurally generated scenes that serve as hf_vlp's embedded data.

Every scene is an RGB canvas with 2-5 coloured shapes drawn with PIL. Each shape has a shape class
(`SHAPES_CLASSES`), a colour (`SHAPES_COLORS`) and a size ("small" / "large"); its gold box is the tight
pixel box of the drawn pixels. Every downstream task of the VLP papers is built from the same scenes:

    captions     one row per caption (MLM / ITM / ITC pretraining, captioning)
    retrieval    one row per image with one caption (image-text retrieval)
    vqa          questions with an answer vocabulary (`SHAPES_VQA_ANSWERS`)
    refexp       a referring expression and the index of its box
    nlvr2        two images and a statement, True / False
    entailment   an image and a hypothesis: entailment / neutral / contradiction

Determinism: scene `index` of `split` under `seed` is drawn from
`numpy.random.default_rng([seed, split_id, index])`, and a task's text for that scene from
`default_rng([seed, split_id, index, task_id])`. The split id is part of the seed, so train / validation / test
come from disjoint random streams, and every task of one split sees the same images (pretrain on `captions`,
fine-tune on `vqa` of the same training images, evaluate on `validation`). See docs/data.md for the schemas.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

# Detector-style class vocabulary: index 0 is "background", as in Faster R-CNN heads (and the 1601 VG classes).
SHAPES_CLASSES = ("background", "circle", "square", "triangle", "diamond", "cross")
SHAPE_NAMES = SHAPES_CLASSES[1:]
SHAPE_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
# Colour attribute vocabulary and the RGB each colour is drawn with (far apart, so colour is never ambiguous).
SHAPES_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
COLOR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 190),
    "orange": (245, 135, 25),
}
SHAPES_SIZES = ("small", "large")
# Side of a shape's bounding square in pixels at image_size=128 (scaled with the canvas).
SIZE_RANGE = {"small": (14, 20), "large": (28, 38)}
MAX_COUNT = 5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
# Materials are never drawn: they are the "hidden attribute" that makes an entailment hypothesis neutral.
HIDDEN_MATERIALS = ("wood", "metal", "glass", "plastic")

SHAPES_VQA_ANSWERS = ("no", "yes") + SHAPES_COLORS + SHAPE_NAMES + tuple(str(n) for n in range(MAX_COUNT + 1))
SHAPES_VQA_QUESTION_TYPES = ("color", "shape", "count", "exist", "spatial")
SHAPES_ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
SHAPES_NLVR2_LABELS = ("False", "True")
SHAPES_TASKS = ("captions", "retrieval", "vqa", "refexp", "nlvr2", "entailment")
SHAPES_SPLITS = ("train", "validation", "test")

# Bump when drawing or feature extraction changes, so cached region features are recomputed.
SHAPES_VERSION = 2
DEFAULT_SAMPLES_PER_IMAGE = {"captions": 3, "retrieval": 1, "vqa": 3, "refexp": 2, "nlvr2": 1, "entailment": 3}
# A spatial relation is only stated when box centres differ by more than this many pixels, so "left of" is
# never a judgement call.
SPATIAL_MARGIN = 6.0


@dataclasses.dataclass
class ShapeObject:
    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels; x2 / y2 are exclusive (x1 + width)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclasses.dataclass
class Scene:
    image_id: str
    image: Image.Image
    objects: list[ShapeObject]
    class_probs: np.ndarray  # (num_objects, len(SHAPES_CLASSES)) float32


# --------------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------------


def _check_split(split: str) -> int:
    if split not in SHAPES_SPLITS:
        raise ValueError(f"split must be one of {SHAPES_SPLITS}, got {split!r}")
    return SHAPES_SPLITS.index(split)


def _check_int(name: str, value, minimum: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, side: int, fill) -> None:
    """Draw `shape` inside the square [x, x + side) x [y, y + side)."""
    right, bottom = x + side - 1, y + side - 1  # PIL coordinates are inclusive
    mid_x, mid_y = x + (side - 1) / 2, y + (side - 1) / 2
    if shape == "circle":
        draw.ellipse([x, y, right, bottom], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, right, bottom], fill=fill)
    elif shape == "triangle":
        draw.polygon([(mid_x, y), (right, bottom), (x, bottom)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(mid_x, y), (right, mid_y), (mid_x, bottom), (x, mid_y)], fill=fill)
    elif shape == "cross":
        arm = max(side // 3, 2)
        offset = (side - arm) // 2
        draw.rectangle([x + offset, y, x + offset + arm - 1, bottom], fill=fill)
        draw.rectangle([x, y + offset, right, y + offset + arm - 1], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def generate_scene(seed: int, split: str, index: int, image_size: int = 128) -> Scene:
    """Scene `index` of `split`: a function of (seed, split, index, image_size) only."""
    split_id = _check_split(split)
    rng = np.random.default_rng([seed, split_id, index])
    scale = image_size / 128
    background = int(rng.integers(215, 246))  # a light grey that varies a little between images
    image = Image.new("RGB", (image_size, image_size), (background,) * 3)
    draw = ImageDraw.Draw(image)

    num_objects = int(rng.integers(2, MAX_COUNT + 1))
    # Distinct (colour, shape) pairs: "the red circle" always names exactly one object.
    pairs = rng.choice(len(SHAPES_COLORS) * len(SHAPE_NAMES), size=num_objects, replace=False)
    margin, gap = max(int(2 * scale), 1), max(int(4 * scale), 2)
    placed: list[tuple[int, int, int]] = []  # (x, y, side) of the squares already used
    objects = []
    for pair in pairs:
        color, shape = SHAPES_COLORS[pair // len(SHAPE_NAMES)], SHAPE_NAMES[pair % len(SHAPE_NAMES)]
        size = SHAPES_SIZES[int(rng.integers(2))]
        # Rejection sampling of a free spot; a crowded canvas falls back to a small shape, then gives up on it.
        for attempt in range(200):
            if attempt == 100:
                size = "small"
            low, high = SIZE_RANGE[size]
            side = round(int(rng.integers(low, high + 1)) * scale)
            x = int(rng.integers(margin, image_size - side - margin + 1))
            y = int(rng.integers(margin, image_size - side - margin + 1))
            if all(
                x + side + gap <= px or px + pside + gap <= x or y + side + gap <= py or py + pside + gap <= y
                for px, py, pside in placed
            ):
                break
        else:
            continue
        placed.append((x, y, side))
        _draw_shape(draw, shape, x, y, side, COLOR_RGB[color])
        # The gold box is the tight box of the drawn pixels (a mask drawn with the same geometry).
        mask = Image.new("L", (image_size, image_size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, x, y, side, 255)
        objects.append(ShapeObject(shape, color, size, tuple(float(v) for v in mask.getbbox())))

    # Detector-like soft class scores: (1 - eps) on the true class plus eps of Dirichlet noise over all classes,
    # eps ~ U(0.02, 0.2) per box. The argmax is always the true class, as from a good detector.
    class_probs = np.zeros((len(objects), len(SHAPES_CLASSES)), dtype=np.float32)
    for row, obj in enumerate(objects):
        eps = rng.uniform(0.02, 0.2)
        class_probs[row] = eps * rng.dirichlet(np.ones(len(SHAPES_CLASSES)))
        class_probs[row, SHAPES_CLASSES.index(obj.shape)] += 1 - eps
    return Scene(f"shapes-{split}-{seed}-{index:06d}", image, objects, class_probs)


def generate_scenes(num_images: int, seed: int = 0, split: str = "train", image_size: int = 128) -> list[Scene]:
    _check_int("num_images", num_images, minimum=1)
    _check_int("seed", seed)
    _check_int("image_size", image_size, minimum=64)
    return [generate_scene(seed, split, index, image_size) for index in range(num_images)]


# --------------------------------------------------------------------------------------------------------------
# Language helpers
# --------------------------------------------------------------------------------------------------------------


def _count(objects, shape=None, color=None, size=None) -> int:
    return sum(
        (shape is None or o.shape == shape) and (color is None or o.color == color) and (size is None or o.size == size)
        for o in objects
    )


def _noun_phrase(shape=None, color=None, size=None, plural=False) -> str:
    """'red circle', 'large shapes', 'shape' ... the head noun is 'shape' when no shape is given."""
    noun = shape or "shape"
    if plural:
        noun = SHAPE_PLURALS.get(noun, noun + "s")
    return " ".join(word for word in (size, color, noun) if word)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _descriptions(obj: ShapeObject, objects: list[ShapeObject], use_color=True, use_shape=True) -> list[str]:
    """Every attribute description ("the circle", "the small red circle", ...) that names `obj` alone."""
    found = []
    for keys in (
        ("shape",),
        ("color",),
        ("size", "shape"),
        ("color", "shape"),
        ("size", "color"),
        ("size", "color", "shape"),
    ):
        if (not use_color and "color" in keys) or (not use_shape and "shape" in keys):
            continue
        attributes = {key: getattr(obj, key) for key in keys}
        if _count(objects, **attributes) == 1:
            found.append("the " + _noun_phrase(**attributes))
    return found


def _relation(a: ShapeObject, b: ShapeObject) -> str | None:
    """The clearest spatial relation of a to b ('left of', 'above' ...), or None when too close to call."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if max(abs(dx), abs(dy)) <= SPATIAL_MARGIN:
        return None
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _list_phrase(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


# --------------------------------------------------------------------------------------------------------------
# Tasks: each returns a list of dicts of task fields for one scene (or a scene pair)
# --------------------------------------------------------------------------------------------------------------


def _captions(scene: Scene, rng: np.random.Generator, count: int) -> list[dict]:
    objects = scene.objects
    ordered = sorted(objects, key=lambda o: o.center[0])
    listing = _pick(rng, ["", "an image with ", "a canvas with ", "there is "]) + _list_phrase(
        [_article(o.phrase()) for o in ordered]
    )
    candidates = [listing]
    pairs = [(a, b) for a in objects for b in objects if a is not b and _relation(a, b)]
    for index in rng.permutation(len(pairs))[:2]:
        a, b = pairs[index]
        candidates.append(f"{_article(a.phrase())} {_relation(a, b)} {_article(b.phrase(with_size=False))}")
    counts = {shape: _count(objects, shape=shape) for shape in SHAPE_NAMES}
    parts = [f"{NUMBER_WORDS[n]} {_noun_phrase(shape, plural=n > 1)}" for shape, n in counts.items() if n]
    candidates.append(f"{NUMBER_WORDS[len(objects)]} shapes: {_list_phrase(parts)}")
    # The listing (the most discriminative caption) comes first: `retrieval` uses it.
    return [{"text": text} for text in candidates[:count]]


def _vqa_candidates(objects: list[ShapeObject], question_type: str, rng) -> list[tuple[str, str, str]]:
    """All (question, answer, form) triples of one type that the scene answers unambiguously; `form` names the
    wording ("exist a shape" vs "exist a colour-shape pair" ...), so that wording can be balanced too."""
    found = []
    if question_type == "color":
        for obj in objects:
            found += [(f"what color is {d}?", obj.color, "") for d in _descriptions(obj, objects, use_color=False)]
    elif question_type == "shape":
        for obj in objects:
            found += [(f"what shape is {d}?", obj.shape, "") for d in _descriptions(obj, objects, use_shape=False)]
    elif question_type == "count":
        found.append(("how many shapes are there?", str(len(objects)), "all"))
        for shape in SHAPE_NAMES:
            noun = _noun_phrase(shape, plural=True)
            found.append((f"how many {noun} are there?", str(_count(objects, shape=shape)), "shape"))
        for color in SHAPES_COLORS:
            found.append((f"how many {color} shapes are there?", str(_count(objects, color=color)), "color"))
        for size in SHAPES_SIZES:
            found.append((f"how many {size} shapes are there?", str(_count(objects, size=size)), "size"))
    elif question_type == "exist":
        for shape in SHAPE_NAMES:
            present = _count(objects, shape=shape) > 0
            found.append((f"is there {_article(shape)}?", "yes" if present else "no", "shape"))
            for color in SHAPES_COLORS:
                phrase = _noun_phrase(shape, color)
                found.append(
                    (f"is there {_article(phrase)}?", "yes" if _count(objects, shape, color) else "no", "pair")
                )
    elif question_type == "spatial":
        for a in objects:
            for b in objects:
                dx = b.center[0] - a.center[0]
                if a is b or abs(dx) <= SPATIAL_MARGIN:
                    continue
                for da in _descriptions(a, objects):
                    db = _pick(rng, _descriptions(b, objects))
                    found.append((f"is {da} to the left of {db}?", "yes" if dx > 0 else "no", "left"))
                    found.append((f"is {da} to the right of {db}?", "yes" if dx < 0 else "no", "right"))
    return found


def _vqa(scene: Scene, rng: np.random.Generator, count: int) -> list[dict]:
    """Up to `count` distinct questions about the scene, in ceil(count / 5) rounds over the question types in a
    random order, one question of each type per round (a type the scene cannot ask about is skipped). More rounds
    give more questions of every type per scene: a relation such as "left of" needs many more examples than one
    per scene to be learnt rather than memorised (docs/data.md, "Spatial questions")."""
    rows, asked = [], set()
    for _ in range(-(-count // len(SHAPES_VQA_QUESTION_TYPES))):
        added = 0
        for question_type in rng.permutation(SHAPES_VQA_QUESTION_TYPES):
            candidates = [c for c in _vqa_candidates(scene.objects, question_type, rng) if c[0] not in asked]
            if not candidates:
                continue
            # Draw the answer first, uniformly over the answers this scene offers, then the wording, then a
            # question: "yes"/"no" come out balanced, counting does not collapse onto "1", and "is there a
            # circle?" is not mostly "yes" (a question-only model gains little).
            answer = _pick(rng, sorted({a for _, a, _ in candidates}))
            form = _pick(rng, sorted({f for _, a, f in candidates if a == answer}))
            question = _pick(rng, [q for q, a, f in candidates if a == answer and f == form])
            rows.append({"question": question, "question_type": str(question_type), "answer": answer})
            asked.add(question)
            added += 1
            if len(rows) == count:
                return rows
        if not added:  # the scene has no question left to ask
            break
    return rows


def _refexp(scene: Scene, rng: np.random.Generator, count: int) -> list[dict]:
    objects = scene.objects
    rows = []
    for target_index in rng.permutation(len(objects))[:count]:
        target = objects[target_index]
        expressions = _descriptions(target, objects)
        # Superlatives ("the leftmost circle") need the boxes, not just the attributes.
        for shape in (None, target.shape):
            group = [o for o in objects if shape is None or o.shape == shape]
            if len(group) < 2:
                continue
            for word, axis, sign in (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottom", 1, -1)):
                others = [sign * o.center[axis] for o in group if o is not target]
                if sign * target.center[axis] + SPATIAL_MARGIN < min(others):
                    expressions.append(f"the {word} {shape or 'shape'}")
        rows.append({"text": _pick(rng, expressions), "target_index": int(target_index)})
    return rows


def _entailment(scene: Scene, rng: np.random.Generator, count: int, first_label: int) -> list[dict]:
    """Hypotheses labelled by a fixed rule (docs/data.md, "entailment"):

    entailment     a visible statement that holds: existence, count, left/right, size;
    contradiction  a visible statement that fails, or "there is a <colour> <shape> made of <material>" for a
                   colour-shape pair that is not in the image;
    neutral        "there is a <colour> <shape> made of <material>" for a pair that IS in the image: materials are
                   never drawn, so the picture cannot tell.
    """
    objects = scene.objects
    absent = [(c, s) for c in SHAPES_COLORS for s in SHAPE_NAMES if not _count(objects, s, c)]
    rows = []
    for k in range(count):
        label = SHAPES_ENTAILMENT_LABELS[(first_label + k) % 3]
        obj = _pick(rng, objects)
        material = _pick(rng, HIDDEN_MATERIALS)
        if label == "neutral" or (label == "contradiction" and rng.random() < 0.5):
            color, shape = (obj.color, obj.shape) if label == "neutral" else _pick(rng, absent)
            text = f"there is {_article(_noun_phrase(shape, color))} made of {material}."
        else:
            truth = label == "entailment"
            statements = _visible_statements(objects, obj, rng)
            text = _pick(rng, [s for s, holds in statements if holds == truth])
        rows.append({"text": text, "label": SHAPES_ENTAILMENT_LABELS.index(label)})
    return rows


def _visible_statements(objects, obj, rng) -> list[tuple[str, bool]]:
    """(statement, holds) pairs about what is drawn; both truth values are always present."""
    color, shape = _pick(rng, [(c, s) for c in SHAPES_COLORS for s in SHAPE_NAMES])
    statements = [
        (f"there is {_article(_noun_phrase(obj.shape, obj.color))}.", True),
        (f"there is {_article(_noun_phrase(shape, color))}.", _count(objects, shape, color) > 0),
        (f"the {obj.color} {obj.shape} is {obj.size}.", True),
        (f"the {obj.color} {obj.shape} is {SHAPES_SIZES[1 - SHAPES_SIZES.index(obj.size)]}.", False),
    ]
    n = _count(objects, shape=shape)
    wrong = _pick(rng, [m for m in range(1, MAX_COUNT + 1) if m != n])
    for m in (n, wrong):
        if m > 0:
            verb = "is" if m == 1 else "are"
            statements.append((f"there {verb} {NUMBER_WORDS[m]} {_noun_phrase(shape, plural=m > 1)}.", m == n))
    for other in objects:
        dx = other.center[0] - obj.center[0]
        if other is not obj and abs(dx) > SPATIAL_MARGIN:
            side = _pick(rng, ["left", "right"])
            holds = (dx > 0) == (side == "left")
            statements.append(
                (f"the {obj.color} {obj.shape} is to the {side} of the {other.color} {other.shape}.", holds)
            )
    return statements


def _nlvr2(left: Scene, right: Scene, rng: np.random.Generator, label: int) -> dict:
    """A statement about a pair of scenes whose truth value is `label` (chosen by the caller: exact balance)."""
    templates = {
        "both": lambda n, m: n > 0 and m > 0,
        "exactly one": lambda n, m: (n > 0) != (m > 0),
        "neither": lambda n, m: n == 0 and m == 0,
        "more": lambda n, m: n > m,
        "fewer": lambda n, m: n < m,
        "left only": lambda n, m: n > 0 and m == 0,
        "total": None,
    }
    attributes = (
        [{"shape": s} for s in SHAPE_NAMES]
        + [{"color": c} for c in SHAPES_COLORS]
        + [{"shape": s, "color": c} for c in SHAPES_COLORS for s in SHAPE_NAMES]
        + [{}]
    )
    truth = bool(label)
    # Template first, then the kind of attribute (shape / colour / both / all shapes), then the attribute, each
    # uniformly among those that can reach the wanted truth value: the wording alone then says little about
    # the label.
    options = {}
    for name, holds in templates.items():
        for attrs in attributes:
            if not attrs and name not in ("more", "fewer", "total"):
                continue  # every image contains "a shape"
            n, m = _count(left.objects, **attrs), _count(right.objects, **attrs)
            if name == "total":
                total = n + m
                # a false total is off by one, so the number alone does not give the label away
                claimed = total if truth else _pick(rng, [t for t in (total - 1, total + 1) if t > 0])
                if claimed > 0:
                    options.setdefault(name, {}).setdefault(tuple(attrs), []).append((attrs, claimed))
            elif holds(n, m) == truth:
                options.setdefault(name, {}).setdefault(tuple(attrs), []).append((attrs, None))
    name = _pick(rng, sorted(options))
    attrs, claimed = _pick(rng, options[name][_pick(rng, sorted(options[name]))])
    singular, plural = _noun_phrase(**attrs), _noun_phrase(**attrs, plural=True)
    text = {
        "both": f"both images contain {_article(singular)}.",
        "exactly one": f"exactly one image contains {_article(singular)}.",
        "neither": f"neither image contains {_article(singular)}.",
        "more": f"the left image contains more {plural} than the right image.",
        "fewer": f"the left image contains fewer {plural} than the right image.",
        "left only": f"the left image contains {_article(singular)} and the right image does not.",
        "total": f"there {'is' if claimed == 1 else 'are'} {claimed} {singular if claimed == 1 else plural} in total.",
    }[name]
    return {"text": text, "label": label}


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------


def _image_features(feature_dim: int | None, suffix: str = "") -> dict:
    float_matrix = datasets.List(datasets.List(datasets.Value("float32")))
    features = {
        "image_id" + suffix: datasets.Value("string"),
        "image" + suffix: datasets.Image(),
        "image_width" + suffix: datasets.Value("int32"),
        "image_height" + suffix: datasets.Value("int32"),
        "boxes" + suffix: float_matrix,
        "region_labels" + suffix: datasets.List(datasets.ClassLabel(names=list(SHAPES_CLASSES))),
        "region_colors" + suffix: datasets.List(datasets.ClassLabel(names=list(SHAPES_COLORS))),
        "region_class_probs" + suffix: float_matrix,
    }
    if feature_dim is not None:
        features["region_features" + suffix] = float_matrix
    return features


def _image_fields(scene: Scene, region_features: np.ndarray | None, suffix: str = "") -> dict:
    fields = {
        "image_id": scene.image_id,
        "image": scene.image,
        "image_width": scene.image.width,
        "image_height": scene.image.height,
        "boxes": [list(o.box) for o in scene.objects],
        "region_labels": [SHAPES_CLASSES.index(o.shape) for o in scene.objects],
        "region_colors": [SHAPES_COLORS.index(o.color) for o in scene.objects],
        "region_class_probs": scene.class_probs,
    }
    if region_features is not None:
        fields["region_features"] = region_features
    return {key + suffix: value for key, value in fields.items()}


def _task_features(task: str) -> dict:
    text = {"text": datasets.Value("string")}
    if task in ("captions", "retrieval"):
        return text
    if task == "vqa":
        return {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "answer_ids": datasets.List(datasets.ClassLabel(names=list(SHAPES_VQA_ANSWERS))),
            "answer_scores": datasets.List(datasets.Value("float32")),
        }
    if task == "refexp":
        return {**text, "target_index": datasets.Value("int32")}
    if task == "entailment":
        return {**text, "label": datasets.ClassLabel(names=list(SHAPES_ENTAILMENT_LABELS))}
    return {**text, "label": datasets.ClassLabel(names=list(SHAPES_NLVR2_LABELS))}


def _region_features(scenes, feature_extractor, cache_dir, seed, split, image_size) -> list[np.ndarray]:
    """Features of every scene's boxes, computed once in batches and cached as one .npz per scene set."""
    from .features import RegionFeatureExtractor  # torch model: imported only when features are wanted

    extractor = feature_extractor if feature_extractor is not None else RegionFeatureExtractor.default()
    cache_key = getattr(extractor, "cache_key", None)  # extractors without one are not cached
    path = None
    if cache_dir is not False and cache_key is not None:
        root = (
            Path(
                cache_dir
                if cache_dir is not None
                else os.environ.get("HF_VLP_CACHE", Path.home() / ".cache" / "hf_vlp")
            )
            / "shapes_features"
        )
        key = repr((SHAPES_VERSION, seed, split, len(scenes), image_size, cache_key()))
        path = root / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
        if path.exists():
            cached = np.load(path)
            return np.split(cached["features"], np.cumsum(cached["counts"])[:-1])
    features = extractor.extract([s.image for s in scenes], [np.array([o.box for o in s.objects]) for s in scenes])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")  # write then rename: no half-written cache
        np.savez(temporary, features=np.concatenate(features), counts=[len(f) for f in features])
        os.replace(temporary, path)
    return features


def shapes_dataset(
    task: str,
    num_images: int = 256,
    seed: int = 0,
    split: str = "train",
    samples_per_image: int | None = None,
    image_size: int = 128,
    with_region_features: bool = True,
    feature_extractor=None,
    cache_dir: str | os.PathLike | bool | None = None,
) -> datasets.Dataset:
    """One task of the shapes world as a `datasets.Dataset`.

    Args:
        task: one of `SHAPES_TASKS` ("captions", "retrieval", "vqa", "refexp", "nlvr2", "entailment").
        num_images: number of scenes (for "nlvr2": number of pairs; row i pairs scene i with scene i + 1).
        seed: any non-negative integer; (seed, split) fixes every pixel and every string.
        split: "train", "validation" or "test" (disjoint random streams).
        samples_per_image: rows per scene (captions / questions / expressions / hypotheses); the default is
            `DEFAULT_SAMPLES_PER_IMAGE[task]`. A scene with fewer possible samples yields fewer rows. For "vqa",
            up to 5 questions are each of another type; more ask further rounds of one new question per type.
        image_size: canvas side in pixels; shapes scale with it.
        with_region_features: add `region_features` from the EfficientNet-lite0 `RegionFeatureExtractor`.
        feature_extractor: a `RegionFeatureExtractor` to use instead of the default one (or any object with
            `.extract(images, boxes) -> list of (N_i, D)`; cached only when it has `.cache_key()`).
        cache_dir: where region features are cached (default `$HF_VLP_CACHE` or `~/.cache/hf_vlp`); False
            disables the cache.
    """
    if task not in SHAPES_TASKS:
        raise ValueError(f"task must be one of {SHAPES_TASKS}, got {task!r}")
    _check_split(split)
    if samples_per_image is None:
        samples_per_image = DEFAULT_SAMPLES_PER_IMAGE[task]
    _check_int("samples_per_image", samples_per_image, minimum=1)
    if task in ("retrieval", "nlvr2") and samples_per_image != 1:
        raise ValueError(f"samples_per_image must be 1 for task {task!r}, got {samples_per_image}")
    if task == "nlvr2" and num_images < 2:
        raise ValueError(f"num_images must be >= 2 for task 'nlvr2' (pairs of scenes), got {num_images}")
    scenes = generate_scenes(num_images, seed, split, image_size)
    features = (
        _region_features(scenes, feature_extractor, cache_dir, seed, split, image_size)
        if with_region_features
        else [None] * len(scenes)
    )
    feature_dim = features[0].shape[1] if with_region_features else None

    task_id = SHAPES_TASKS.index(task)
    rows = []
    for index, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, SHAPES_SPLITS.index(split), index, task_id])
        image_fields = _image_fields(scene, features[index])
        if task == "nlvr2":
            partner = (index + 1) % len(scenes)
            sample = _nlvr2(scene, scenes[partner], rng, label=index % 2)
            rows.append({**image_fields, **_image_fields(scenes[partner], features[partner], "_2"), **sample})
            continue
        if task in ("captions", "retrieval"):
            samples = _captions(scene, rng, samples_per_image)
        elif task == "vqa":
            samples = _vqa(scene, rng, samples_per_image)
            for k, sample in enumerate(samples):
                answer_id = SHAPES_VQA_ANSWERS.index(sample["answer"])
                sample.update(
                    question_id=index * 100 + k, answers=[sample["answer"]], answer_ids=[answer_id], answer_scores=[1.0]
                )
        elif task == "refexp":
            samples = _refexp(scene, rng, samples_per_image)
        else:
            samples = _entailment(scene, rng, samples_per_image, first_label=index * samples_per_image)
        rows += [{**image_fields, **sample} for sample in samples]

    schema = {**_image_features(feature_dim)}
    if task == "nlvr2":
        schema.update(_image_features(feature_dim, "_2"))
    schema.update(_task_features(task))
    columns = {name: [row[name] for row in rows] for name in schema}
    return datasets.Dataset.from_dict(columns, features=datasets.Features(schema), split=split)
