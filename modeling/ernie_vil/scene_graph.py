"""Scene-graph targets for ERNIE-ViL pretraining (Yu et al., AAAI 2021, Sec. 3.2).

ERNIE-ViL parses each caption into a scene graph — objects, attributes attached to objects, and relations between
two objects — and builds three "scene graph prediction" tasks on the caption's words: mask the words of some
objects (object prediction), of some attributes (attribute prediction), of some relations (relationship
prediction), and predict them with the MLM head from the image and the rest of the caption.

Two parsers produce a `SceneGraph` of character spans:

* `parse_scene_graph` (default, no dependency): a rule-based parser. Words are split on `\\w+`; relation phrases
  come from a lexicon of spatial / action relations (multi-word first: "to the left of", "next to", "on top of",
  "in front of", ..., "on", "in", "with", "holding", ...); attribute words from a lexicon (colours, sizes, shapes'
  adjectives, materials, number words, common adjectives); determiners, copulas and conjunctions separate phrases.
  Every other word is an object word; consecutive object words form one object (compounds such as "tennis
  racket"), attributes before an object — or after a copula ("the ball is red") — attach to it, and a relation
  phrase between two objects yields (subject, relation, object). It handles the simple declarative captions of
  captioning data sets and the shapes world; it does not resolve clauses, pronouns or coordination beyond lists.
* `SpacySceneGraphParser` (extra `scene-graph`: `pip install spacy` plus an English pipeline such as
  `en_core_web_sm`): nouns are objects, their `amod` / `nummod` / `compound`-adjective children and copular
  complements are attributes, and prepositions or verbs linking two nouns (`prep`+`pobj`, `nsubj`+verb+`dobj`)
  are relations — the dependency-parse approach of the SPICE scene-graph parser the paper used.

`SceneGraphTargetBuilder` turns captions into masked `input_ids` and `object_labels` / `attribute_labels` /
`relation_labels` (plus optional random-word `labels`); `DataCollatorForErnieVilPretraining` adds them to the shared
region / ITM collator's batch.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import torch

Span = tuple[int, int]

RELATION_PHRASES = sorted(
    [
        "to the left of",
        "to the right of",
        "on the left of",
        "on the right of",
        "left of",
        "right of",
        "in front of",
        "on top of",
        "next to",
        "close to",
        "in the middle of",
        "on the side of",
        "at the top of",
        "at the bottom of",
        "above",
        "below",
        "under",
        "underneath",
        "beneath",
        "behind",
        "beside",
        "besides",
        "near",
        "by",
        "over",
        "on",
        "in",
        "inside",
        "at",
        "with",
        "without",
        "against",
        "along",
        "across",
        "around",
        "between",
        "among",
        "through",
        "into",
        "onto",
        "toward",
        "towards",
        "holding",
        "wearing",
        "riding",
        "carrying",
        "eating",
        "watching",
        "looking at",
        "sitting on",
        "standing on",
        "standing in",
        "lying on",
        "walking on",
        "walking down",
        "hanging on",
        "hanging from",
        "parked on",
        "covered in",
        "covered with",
        "full of",
        "made of",
        "has",
        "have",
        "having",
        "contains",
        "containing",
        "touching",
        "surrounded by",
    ],
    key=lambda phrase: -len(phrase.split()),
)
ATTRIBUTE_WORDS = set(
    """
    red green blue yellow purple orange white black brown gray grey pink gold golden silver dark light bright
    colorful colourful striped spotted plaid
    small large big little tiny huge giant tall short long wide narrow thick thin high low
    round rectangular triangular circular square-shaped oval flat curved pointed
    wooden metal metallic glass plastic stone brick concrete leather paper cloth furry fluffy wet dry
    old new young empty full open closed clean dirty shiny wooden
    one two three four five six seven eight nine ten several many few some both
    sitting standing walking running flying parked
    """.split()
)
SEPARATORS = set(
    """
    a an the this that these those its their his her there here
    is are was were be been being am
    and or but while , . ; : ! ?
    of
    """.split()
)


@dataclass
class SceneGraph:
    """Character spans of a caption's scene-graph nodes. `attributes` hold (attribute span, object index),
    `relations` (subject object index, relation span, object index)."""

    objects: list[Span] = field(default_factory=list)
    attributes: list[tuple[Span, int]] = field(default_factory=list)
    relations: list[tuple[int, Span, int]] = field(default_factory=list)


def _words(caption):
    return [(m.group(0).lower(), m.start(), m.end()) for m in re.finditer(r"\w+(?:-\w+)*|[,.;:!?]", caption)]


def parse_scene_graph(caption: str) -> SceneGraph:
    """Rule-based scene graph of a caption (see the module docstring for the rules)."""
    words = _words(caption)
    graph = SceneGraph()
    pending_attributes: list[Span] = []  # attributes waiting for their object
    pending_relation: tuple[int, Span] | None = None  # (subject index, relation span) waiting for its object
    after_copula = False
    current_object: list[int] = []  # word indices of the object being read
    i = 0

    def close_object():
        nonlocal current_object, pending_attributes, pending_relation, after_copula
        if not current_object:
            return
        start, end = words[current_object[0]][1], words[current_object[-1]][2]
        graph.objects.append((start, end))
        index = len(graph.objects) - 1
        graph.attributes.extend((span, index) for span in pending_attributes)
        if pending_relation is not None:
            graph.relations.append((pending_relation[0], pending_relation[1], index))
        current_object, pending_attributes, pending_relation, after_copula = [], [], None, False

    while i < len(words):
        relation = next(
            (
                phrase
                for phrase in RELATION_PHRASES
                if [w for w, _, _ in words[i : i + len(phrase.split())]] == phrase.split()
            ),
            None,
        )
        if relation is not None:
            close_object()
            length = len(relation.split())
            span = (words[i][1], words[i + length - 1][2])
            if graph.objects:
                pending_relation = (len(graph.objects) - 1, span)
            pending_attributes, after_copula = [], False
            i += length
            continue
        word, start, end = words[i]
        if word in ATTRIBUTE_WORDS and not current_object:
            if after_copula and graph.objects and pending_relation is None:
                graph.attributes.append(((start, end), len(graph.objects) - 1))  # "the ball is red"
            else:
                pending_attributes.append((start, end))
        elif word in SEPARATORS or word in ATTRIBUTE_WORDS:
            close_object()
            if word in ("is", "are", "was", "were", "be", "am"):
                after_copula = True
            elif word in ("and", "or", ",", ".", ";", "!", "?"):
                pending_attributes, pending_relation, after_copula = [], None, False
            if word in ATTRIBUTE_WORDS:
                pending_attributes.append((start, end))
        elif word.isdigit():
            pending_attributes.append((start, end))
        else:
            current_object.append(i)
        i += 1
    close_object()
    return graph


class SpacySceneGraphParser:
    """Scene graphs from a spaCy dependency parse (extra `scene-graph`).

    `nlp`: a pipeline name (loaded with `spacy.load`) or any callable returning a spaCy-like `Doc` (tokens with `i`,
    `idx`, `text`, `pos_`, `dep_`, `head`, `children`, `lefts`).
    """

    def __init__(self, nlp="en_core_web_sm"):
        if isinstance(nlp, str):
            try:
                import spacy
            except ImportError as error:  # pragma: no cover - depends on the optional extra
                raise ImportError("SpacySceneGraphParser needs spaCy: pip install 'hf_vlp[scene-graph]'") from error
            nlp = spacy.load(nlp)
        self.nlp = nlp

    @staticmethod
    def _span(token):
        return (token.idx, token.idx + len(token.text))

    def __call__(self, caption: str) -> SceneGraph:
        doc = self.nlp(caption)
        graph = SceneGraph()
        index_of = {}  # token index of an object's head noun -> object index
        for token in doc:
            if token.pos_ in ("NOUN", "PROPN") and token.dep_ != "compound":
                compounds = [t for t in token.lefts if t.dep_ == "compound"]
                start = min([token.idx] + [t.idx for t in compounds])
                index_of[token.i] = len(graph.objects)
                graph.objects.append((start, token.idx + len(token.text)))

        def subject_of(verb):
            """The object a verb (or a preposition's head) is about: its nominal subject, or the noun that an
            `acl` / `relcl` verb modifies ("a man riding a horse")."""
            if verb.i in index_of:
                return verb.i
            subject = next((c.i for c in verb.children if c.dep_ in ("nsubj", "nsubjpass") and c.i in index_of), None)
            if subject is None and verb.dep_ in ("acl", "relcl") and verb.head.i in index_of:
                subject = verb.head.i
            return subject

        for token_index, object_index in index_of.items():
            token = doc[token_index]
            for child in token.children:
                if child.dep_ in ("amod", "nummod") or (child.dep_ == "compound" and child.pos_ == "ADJ"):
                    graph.attributes.append((self._span(child), object_index))
            if token.dep_ in ("nsubj", "nsubjpass"):  # copula: "the ball is red"
                for child in token.head.children:
                    if child.dep_ == "acomp":
                        graph.attributes.append((self._span(child), object_index))
        for token in doc:
            if token.dep_ == "prep":
                objects = [c.i for c in token.children if c.dep_ == "pobj" and c.i in index_of]
                subject = subject_of(token.head)
                if objects and subject is not None:
                    head = token.head
                    # "sitting on": a verb right before its preposition is part of the relation
                    start = head.idx if head.pos_ == "VERB" and head.i == token.i - 1 else token.idx
                    graph.relations.append(
                        (index_of[subject], (start, token.idx + len(token.text)), index_of[objects[0]])
                    )
            elif token.pos_ == "VERB":
                objects = [c.i for c in token.children if c.dep_ == "dobj" and c.i in index_of]
                subject = subject_of(token)
                if objects and subject is not None:
                    graph.relations.append((index_of[subject], self._span(token), index_of[objects[0]]))
        return graph


@dataclass
class SceneGraphTargetBuilder:
    """Captions -> masked `input_ids` and the three scene-graph label tensors (plus random-word MLM `labels`).

    Each object / attribute / relation node is selected with its probability (the paper masks 30% of each kind);
    the tokens of a selected node's words get label = original id and input = [MASK] (80%), a random token (10%)
    or unchanged (10%), as BERT. Nodes overlapping an already selected one are skipped, so each token has at most
    one label. `mlm_probability` > 0 also masks that fraction of the remaining words for `labels`. Rows with
    `itm_labels == 0` (mismatched caption) are left unmasked, as in the paper's conditional masking.
    """

    tokenizer: object
    parser: object = None
    object_probability: float = 0.3
    attribute_probability: float = 0.3
    relation_probability: float = 0.3
    mlm_probability: float = 0.0
    max_length: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("SceneGraphTargetBuilder needs a fast tokenizer (offsets map caption words to tokens).")
        self.parser = self.parser or parse_scene_graph
        self.generator = np.random.default_rng(self.seed)

    def __call__(self, texts, itm_labels=None):
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping")
        special = encoded.pop("special_tokens_mask").bool() | (encoded["attention_mask"] == 0)
        input_ids = encoded["input_ids"].clone()
        labels = {name: torch.full_like(input_ids, -100) for name in ("object", "attribute", "relation", "mlm")}
        for row, text in enumerate(texts):
            if itm_labels is not None and int(itm_labels[row]) == 0:
                continue
            graph = self.parser(text)
            nodes = (
                [("object", span, self.object_probability) for span in graph.objects]
                + [("attribute", span, self.attribute_probability) for span, _ in graph.attributes]
                + [("relation", span, self.relation_probability) for _, span, _ in graph.relations]
            )
            taken = torch.zeros(input_ids.shape[1], dtype=torch.bool)
            for kind, (start, end), probability in nodes:
                if self.generator.random() >= probability:
                    continue
                tokens = (offsets[row, :, 0] < end) & (offsets[row, :, 1] > start) & ~special[row]
                if not tokens.any() or (tokens & taken).any():
                    continue
                taken |= tokens
                labels[kind][row, tokens] = input_ids[row, tokens]
            if self.mlm_probability > 0:
                free = ~special[row] & ~taken
                chosen = free & torch.from_numpy(self.generator.random(input_ids.shape[1]) < self.mlm_probability)
                labels["mlm"][row, chosen] = input_ids[row, chosen]
        predicted = torch.stack([labels[k] != -100 for k in labels]).any(0)
        self._corrupt(input_ids, predicted)
        encoded["input_ids"] = input_ids
        encoded.update(
            object_labels=labels["object"], attribute_labels=labels["attribute"], relation_labels=labels["relation"]
        )
        if self.mlm_probability > 0:
            encoded["labels"] = labels["mlm"]
        return dict(encoded)

    def _corrupt(self, input_ids, predicted):
        """BERT's 80% [MASK] / 10% random token / 10% unchanged on the predicted positions."""
        draw = torch.from_numpy(self.generator.random(input_ids.shape))
        mask = predicted & (draw < 0.8)
        random = predicted & (draw >= 0.8) & (draw < 0.9)
        input_ids[mask] = self.tokenizer.mask_token_id
        random_ids = torch.from_numpy(self.generator.integers(0, len(self.tokenizer), input_ids.shape))
        input_ids[random] = random_ids[random]


@dataclass
class DataCollatorForErnieVilPretraining:
    """The shared region collator (`DataCollatorForVLPretraining` with region / ITM objectives, e.g.
    `objectives=("mrc_kl", "itm")`) + scene-graph text targets on the same captions."""

    region_collator: object
    targets: SceneGraphTargetBuilder
    text_field: str = "text"

    def __call__(self, rows):
        batch = self.region_collator(rows)
        text = self.targets([row[self.text_field] for row in rows], itm_labels=batch.get("itm_labels"))
        batch.update(text)
        return batch


__all__ = [
    "DataCollatorForErnieVilPretraining",
    "SceneGraph",
    "SceneGraphTargetBuilder",
    "SpacySceneGraphParser",
    "parse_scene_graph",
]
