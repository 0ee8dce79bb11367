"""CPT prompt texts for every task of the paper (`Oscar/oscar/datasets/*cpt*_dataset.py`,
`Oscar/oscar/fewshot/*_cpt.py`): RefCOCO text_a templates, object-tag text_b with the colour word in front of the
painted object's tag, VG relation prompts, GQA colour insertion and VCR object references.

The released code has bugs (VG tags enumerated character by character, VCR colours assigned in hash-randomised set
order with objects told apart by their box, RefCOCO templates 4-6 crashing, a double space in the VG prompt); by
default the intended text is built, and `original_quirks=True` reproduces the released strings byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .painting import CptColor, _as_palette

MASK = "[MASK]"


def clean_caption(caption: str) -> str:
    """RefCOCO: `caption.replace(".", "").strip()` (both CPT datasets)."""
    return caption.replace(".", "").strip()


def _template_with_span(caption, span, which):
    if span is None:
        raise ValueError(
            f"template {which} puts [MASK] at a character position of the caption: pass `span` = (start, end) of the "
            "referred phrase (RefCOCO `tokens_positive`)."
        )
    start, end = int(span[0]), int(span[1])
    if not 0 <= start <= end <= len(caption):
        raise ValueError(f"`span` {span} must satisfy 0 <= start <= end <= len(caption) = {len(caption)}.")
    if which == 4:
        return (
            caption[:end] + " in [MASK]." if end == len(caption) else caption[:end] + " in [MASK]" + caption[end:] + "."
        )
    if which == 5:
        if end == len(caption):
            return caption[:end] + " in [MASK] color."
        return caption[:end] + " in [MASK] color" + caption[end:] + "."
    return caption[:start] + "[MASK] " + caption[start:] + "."


# The RefCOCO zero-shot templates (`refcoco_zsl_cpt_dataset.py` template1..6); few-shot always uses 3.
REFEXP_TEMPLATES = {
    1: "{caption} is [MASK].",
    2: "{caption} is [MASK] color.",
    3: "{caption} is in [MASK] color.",
    4: "<caption up to the phrase end> in [MASK]<rest>.",
    5: "<caption up to the phrase end> in [MASK] color<rest>.",
    6: "<caption up to the phrase start>[MASK] <rest>.",
}


def refexp_prompt(caption: str, template=3, span=None, original_quirks: bool = False) -> str:
    """The text_a of a referring-expression prompt. `template`: 1-6 (the released templates) or a format string
    with `{caption}` and exactly one `[MASK]`. `caption` is used as given (see `clean_caption`)."""
    if isinstance(template, str):
        if template.count(MASK) != 1:
            raise ValueError(f"a CPT prompt template must contain exactly one {MASK}, got {template!r}.")
        if "{caption}" not in template:
            raise ValueError(f"a CPT prompt template must contain '{{caption}}', got {template!r}.")
        return template.replace("{caption}", caption)
    if template not in REFEXP_TEMPLATES:
        raise ValueError(f"`template` must be one of {sorted(REFEXP_TEMPLATES)} or a format string, got {template!r}.")
    if template <= 3:
        return REFEXP_TEMPLATES[template].format(caption=caption)
    if original_quirks:
        # the released datasets pass `posi_token = 0` (an int) and index it: templates 4-6 raise a TypeError
        raise ValueError(
            f"template {template} crashes in the released CPT code (it indexes the int `posi_token`); use "
            "original_quirks=False and pass `span` for the intended behaviour."
        )
    return _template_with_span(caption, span, template)


def tag_text(labels: Sequence[str], painted: dict[int, str]) -> str:
    """Object tags (text_b): the labels joined by spaces, with `"<colour> "` in front of each painted one
    (`painted` = {label index: colour name})."""
    return " ".join(f"{painted[i]} {label}" if i in painted else label for i, label in enumerate(labels))


def relation_prompts(
    subject: str, object: str, colors=("red", "blue"), max_masks: int = 3, original_quirks: bool = False
) -> list[str]:
    """VG relation prompts (`vg_test_dataset.py`): `"<s> in red color is [MASK]... a <o> in blue color"` with 1 to
    `max_masks` masks, then the reversed `"<o> in blue color is [MASK]... a <s> in red color"`. The released
    format string leaves a double space before the first mask (`original_quirks=True`)."""
    if max_masks < 1:
        raise ValueError(f"`max_masks` must be >= 1, got {max_masks}.")
    subject_phrase = f"{subject} in {colors[0]} color"
    object_phrase = f"{object} in {colors[1]} color"
    gap = " " if original_quirks else ""
    masks = [gap + " ".join([MASK] * n) for n in range(1, max_masks + 1)]
    forward = [f"{subject_phrase} is {m} a {object_phrase}" for m in masks]
    reverse = [f"{object_phrase} is {m} a {subject_phrase}" for m in masks]
    return forward + reverse


def relation_tag_text(
    labels: Sequence[str], pair: tuple[int, int], colors=("red", "blue"), original_quirks: bool = False
) -> str:
    """VG object tags with the subject's and object's colour words. The released code receives the tags as one
    space-joined string and enumerates its CHARACTERS (`original_quirks=True`), so the colours land in front of the
    characters whose index equals the box indices; the intended text colours the words."""
    if original_quirks:
        characters = " ".join(labels)
        out = []
        for i, character in enumerate(characters):
            if i == pair[0]:
                out.append(f"{colors[0]} {character}")
            elif i == pair[1]:
                out.append(f"{colors[1]} {character}")
            else:
                out.append(character)
        return " ".join(out)
    painted = {pair[1]: colors[1], pair[0]: colors[0]}
    return tag_text(labels, painted)


def insert_colors(question: str, spans_and_colors) -> str:
    """GQA (`gqa_cpt.py get_img_feature`): insert `"<colour> "` at the start offset of each painted phrase."""
    items = sorted(((int(span[0]), name) for span, name in spans_and_colors), key=lambda item: item[0])
    pieces, previous = [], 0
    for start, name in items:
        if not 0 <= start <= len(question):
            raise ValueError(f"span start {start} lies outside the question of length {len(question)}.")
        pieces += [question[previous:start], name + " "]
        previous = start
    pieces.append(question[previous:])
    return "".join(pieces)


def _reference_key(reference) -> str:
    return "_".join(str(y) for y in sorted(reference))


def _references(sentence, original_quirks):
    keys = [_reference_key(word) for word in sentence if isinstance(word, list)]
    if original_quirks:
        return list(set(keys))  # the released code: hash-randomised order when a sentence has several references
    return list(dict.fromkeys(keys))  # intended: order of first appearance


@dataclass
class VcrColoring:
    """What `VCRColorDataset.construct_to_mark_and_color` decides: painted object ids and their colours (paint
    order), and per reference key ("0", "0_1") the colour word and the name used in the text."""

    painted_objects: list[int]
    painted_colors: list[CptColor]
    text_colors: dict[str, str]
    text_names: dict[str, str]


def vcr_coloring(
    question, answers, rationales, names, boxes=None, n_color: int = 3, colors="gqa_vcr", original_quirks: bool = False
) -> VcrColoring:
    """Assign colours to the objects referenced in a VCR question and its answers (not the rationales): at most
    `n_color` reference groups, in order of first appearance; every not-yet-painted object of a group gets the
    group's colour. Text names: `person`/`people`, `<cls>`/`<cls>s`, `objects` for mixed classes."""
    palette = _as_palette(colors)
    if n_color > len(palette):
        raise ValueError(f"`n_color` = {n_color} but the palette has only {len(palette)} colours.")
    if original_quirks and boxes is None:
        raise ValueError("original_quirks=True tells objects apart by their box: pass `boxes`.")
    sentences_shown = [question] + list(answers)
    all_keys = [k for s in sentences_shown + list(rationales) for k in _references(s, original_quirks)]
    shown_keys = list(dict.fromkeys(k for s in sentences_shown for k in _references(s, original_quirks)))
    painted, painted_colors, painted_boxes, object_color = [], [], [], {}
    color_count = 0
    for key in shown_keys:
        if color_count >= n_color:
            break
        new_paint = False
        for obj in (int(y) for y in key.split("_")):
            if not 0 <= obj < len(names):
                raise ValueError(f"reference {obj} in the text but only {len(names)} objects in `names`.")
            # the released code compares boxes ("d not in ret_to_mark_dets"); intended: object ids
            already = (list(boxes[obj][:4]) in painted_boxes) if original_quirks else (obj in object_color)
            if not already:
                painted.append(obj)
                painted_colors.append(palette[color_count])
                if boxes is not None:
                    painted_boxes.append(list(boxes[obj][:4]))
                object_color[obj] = palette[color_count]
                new_paint = True
        if new_paint:
            color_count += 1
    text_colors, text_names = {}, {}
    for key in dict.fromkeys(all_keys):
        objects = [int(y) for y in key.split("_")]
        classes = [names[i] for i in objects]
        if len(set(classes)) == 1:
            if classes[0] == "person":
                text_names[key] = "person" if len(classes) == 1 else "people"
            else:
                text_names[key] = classes[0] if len(classes) == 1 else classes[0] + "s"
        else:
            text_names[key] = "objects"
        object_colors = {object_color[i].name if i in object_color else "none" for i in objects}
        if len(object_colors) == 1 and "none" not in object_colors:
            text_colors[key] = object_colors.pop()
    return VcrColoring(painted, painted_colors, text_colors, text_names)


def vcr_textize(sentence, coloring: VcrColoring, colorful: bool = True) -> str:
    """A VCR token list with object references -> text: `<name>` or `<name> in <colour>` (`_vcr_textize`)."""
    words = []
    for word in sentence:
        if isinstance(word, list):
            key = _reference_key(word)
            name = coloring.text_names[key]
            words.append(f"{name} in {coloring.text_colors[key]}" if colorful and key in coloring.text_colors else name)
        else:
            words.append(word)
    return " ".join(words)
