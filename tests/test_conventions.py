"""transformers conventions, checked once over every hf_vlp model class (as transformers' common model tests do):

* `forward` has an explicit signature whose first argument is the model's main input (no `**kwargs` catch-all);
* every head returns its hidden states / attentions when asked, and not otherwise;
* `set_attn_implementation("eager")` and `("sdpa")` are accepted and give the same outputs;
* `resize_token_embeddings` works for every model with a masked-LM head: the decoder and its bias follow, the model
  runs on the new ids, and it saves and reloads;
* `_no_split_modules` names classes the model holds.

Tiny configs and inputs come from each architecture's own test module.
"""

import inspect

import pytest
import test_blip
import test_clip
import test_ernie_vil
import test_lxmert
import test_oscar
import test_switch_transformers
import test_uniter
import test_vilbert
import test_vilt
import test_visual_bert
import test_vit
import torch

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.modeling.blip import (
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForPreTraining,
    BlipForQuestionAnswering,
)
from hf_vlp.modeling.clip import CLIPForPreTraining, CLIPResNetModel
from hf_vlp.modeling.ernie_vil import (
    ErnieVilForImageTextRetrieval,
    ErnieVilForMultipleChoice,
    ErnieVilForPreTraining,
    ErnieVilForReferringExpression,
    ErnieVilForVisualQuestionAnswering,
    ErnieVilModel,
)
from hf_vlp.modeling.lxmert import LxmertForPreTraining, LxmertForVisualQuestionAnswering, LxmertModel
from hf_vlp.modeling.oscar import (
    OscarForImageTextRetrieval,
    OscarForPreTraining,
    OscarForVisualQuestionAnswering,
    OscarForVisualReasoning,
    OscarModel,
)
from hf_vlp.modeling.switch_transformers import SwitchTransformersForConditionalGeneration
from hf_vlp.modeling.uniter import (
    UniterForImageTextRetrieval,
    UniterForPreTraining,
    UniterForReferringExpression,
    UniterForVisualEntailment,
    UniterForVisualQuestionAnswering,
    UniterForVisualReasoning,
    UniterModel,
)
from hf_vlp.modeling.vilbert import (
    VilbertForGQA,
    VilbertForImageTextRetrieval,
    VilbertForMultipleChoice,
    VilbertForMultiTask,
    VilbertForPreTraining,
    VilbertForReferringExpression,
    VilbertForVisualEntailment,
    VilbertForVisualQuestionAnswering,
    VilbertForVisualReasoning,
    VilbertModel,
)
from hf_vlp.modeling.vilt import ViltForImageTextRetrieval, ViltForPreTraining
from hf_vlp.modeling.visual_bert import (
    VisualBertForMultipleChoice,
    VisualBertForPreTraining,
    VisualBertForVisualQuestionAnswering,
    VisualBertForVisualReasoning,
    VisualBertModel,
)
from hf_vlp.modeling.vit import ViTForImageClassificationWithRepresentation, ViTRepresentationConfig

SINGLE_STREAM = (("hidden_states",), ("attentions",))
TWO_STREAM = (
    ("text_hidden_states", "visual_hidden_states"),
    ("text_attentions", "visual_attentions", "cross_attentions"),
)
LXMERT_FIELDS = (
    ("language_hidden_states", "vision_hidden_states"),
    ("language_attentions", "vision_attentions", "cross_encoder_attentions"),
)


def _paired(inputs, pairs=2):
    """NLVR2 layout: every region input twice on dim 1 (the second image is the first one of another row)."""
    paired = dict(inputs)
    for name, value in inputs.items():
        if name.startswith("visual_"):
            paired[name] = torch.stack([value, value.flip(0)], dim=1)
    return paired


def _choices(inputs, choices=3):
    """Multiple choice: text inputs (B, C, T), region inputs shared by the choices."""
    return {k: v[:, None].expand(-1, choices, *v.shape[1:]) if not k.startswith("visual_") else v for k, v in inputs.items()}


def _oscar_pairs(inputs):
    return {k: torch.stack([v, v.flip(0)], dim=1) for k, v in inputs.items()}


def _blip(head):
    def inputs():
        pixel_values, input_ids, attention_mask = test_blip.tiny_batch()
        batch = dict(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        if head is BlipForQuestionAnswering:
            batch["labels"] = input_ids
        return batch

    return inputs


def _clip_inputs(image_size):
    return lambda: test_clip.tiny_batch(image_size)


def _switch_inputs():
    input_ids, labels = test_switch_transformers.tiny_batch()
    return dict(input_ids=input_ids, labels=labels)


def _vit_config():
    return ViTRepresentationConfig(**test_vit.tiny_sizes(pooler_output_size=8, pooler_act="tanh"))


def _vit_inputs():
    return dict(pixel_values=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


uniter_nlvr2_config = lambda: test_uniter.tiny_config(type_vocab_size=3)  # noqa: E731

# head -> (config factory, inputs factory, (hidden-state fields, attention fields)); dotted fields are nested outputs
CASES = {
    UniterModel: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForPreTraining: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForVisualQuestionAnswering: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForVisualEntailment: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForImageTextRetrieval: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForReferringExpression: (test_uniter.tiny_config, test_uniter.tiny_inputs, SINGLE_STREAM),
    UniterForVisualReasoning: (uniter_nlvr2_config, lambda: _paired(test_uniter.tiny_inputs()), SINGLE_STREAM),
    VilbertModel: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForPreTraining: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForVisualQuestionAnswering: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForGQA: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForImageTextRetrieval: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForVisualEntailment: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForReferringExpression: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    VilbertForVisualReasoning: (test_vilbert.tiny_config, lambda: _paired(test_vilbert.tiny_batch()), TWO_STREAM),
    VilbertForMultipleChoice: (test_vilbert.tiny_config, lambda: _choices(test_vilbert.tiny_batch()), TWO_STREAM),
    VilbertForMultiTask: (test_vilbert.tiny_config, test_vilbert.tiny_batch, TWO_STREAM),
    ErnieVilModel: (test_ernie_vil.tiny_config, test_ernie_vil.tiny_batch, TWO_STREAM),
    ErnieVilForPreTraining: (test_ernie_vil.tiny_config, test_ernie_vil.tiny_batch, TWO_STREAM),
    ErnieVilForVisualQuestionAnswering: (test_ernie_vil.tiny_config, test_ernie_vil.tiny_batch, TWO_STREAM),
    ErnieVilForImageTextRetrieval: (test_ernie_vil.tiny_config, test_ernie_vil.tiny_batch, TWO_STREAM),
    ErnieVilForReferringExpression: (test_ernie_vil.tiny_config, test_ernie_vil.tiny_batch, TWO_STREAM),
    ErnieVilForMultipleChoice: (test_ernie_vil.tiny_config, lambda: _choices(test_ernie_vil.tiny_batch()), TWO_STREAM),
    OscarModel: (test_oscar.tiny_config, test_oscar.tiny_inputs, SINGLE_STREAM),
    OscarForPreTraining: (test_oscar.tiny_config, test_oscar.tiny_inputs, SINGLE_STREAM),
    OscarForVisualQuestionAnswering: (test_oscar.tiny_config, test_oscar.tiny_inputs, SINGLE_STREAM),
    OscarForImageTextRetrieval: (test_oscar.tiny_config, test_oscar.tiny_inputs, SINGLE_STREAM),
    OscarForVisualReasoning: (test_oscar.tiny_config, lambda: _oscar_pairs(test_oscar.tiny_inputs()), SINGLE_STREAM),
    VisualBertModel: (test_visual_bert.tiny_config, test_visual_bert.tiny_inputs, SINGLE_STREAM),
    VisualBertForPreTraining: (test_visual_bert.tiny_config, test_visual_bert.tiny_inputs, SINGLE_STREAM),
    VisualBertForVisualQuestionAnswering: (test_visual_bert.tiny_config, test_visual_bert.tiny_inputs, SINGLE_STREAM),
    VisualBertForVisualReasoning: (
        lambda: test_visual_bert.tiny_config(num_labels=2),
        lambda: _paired(test_visual_bert.tiny_inputs()),
        SINGLE_STREAM,
    ),
    VisualBertForMultipleChoice: (
        test_visual_bert.tiny_config,
        lambda: _choices(test_visual_bert.tiny_inputs()),
        SINGLE_STREAM,
    ),
    LxmertModel: (test_lxmert.tiny_config, test_lxmert.tiny_inputs, LXMERT_FIELDS),
    LxmertForPreTraining: (test_lxmert.tiny_config, test_lxmert.tiny_inputs, LXMERT_FIELDS),
    LxmertForVisualQuestionAnswering: (test_lxmert.tiny_config, test_lxmert.tiny_inputs, LXMERT_FIELDS),
    ViltForPreTraining: (test_vilt.tiny_config, test_vilt.tiny_inputs, SINGLE_STREAM),
    ViltForImageTextRetrieval: (test_vilt.tiny_config, test_vilt.tiny_inputs, SINGLE_STREAM),
    ViTForImageClassificationWithRepresentation: (_vit_config, _vit_inputs, SINGLE_STREAM),
    CLIPForPreTraining: (
        test_clip.tiny_vit_clip,
        _clip_inputs(16),
        (
            ("text_model_output.hidden_states", "vision_model_output.hidden_states"),
            ("text_model_output.attentions", "vision_model_output.attentions"),
        ),
    ),
    CLIPResNetModel: (
        test_clip.tiny_resnet_clip,
        _clip_inputs(32),
        (
            ("text_model_output.hidden_states", "vision_model_output.hidden_states"),
            ("text_model_output.attentions",),
        ),
    ),
    BlipForPreTraining: (
        test_blip.tiny_config,
        _blip(BlipForPreTraining),
        (("vision_hidden_states", "text_hidden_states"), ("vision_attentions", "text_attentions")),
    ),
    BlipForImageTextRetrieval: (
        test_blip.tiny_config,
        _blip(BlipForImageTextRetrieval),
        SINGLE_STREAM,  # the ViT's layers (transformers' output)
    ),
    BlipForQuestionAnswering: (
        test_blip.tiny_config,
        _blip(BlipForQuestionAnswering),
        (("vision_hidden_states", "text_hidden_states"), ("vision_attentions", "text_attentions")),
    ),
    BlipForConditionalGeneration: (
        test_blip.tiny_config,
        _blip(BlipForConditionalGeneration),
        (("hidden_states",), ("attentions",)),
    ),
    SwitchTransformersForConditionalGeneration: (
        test_switch_transformers.tiny_config,
        _switch_inputs,
        (
            ("encoder_hidden_states", "decoder_hidden_states"),
            ("encoder_attentions", "decoder_attentions", "cross_attentions"),
        ),
    ),
}

HEADS = sorted(CASES, key=lambda head: head.__name__)
_ids = lambda head: head.__name__  # noqa: E731


def _build(head, attn_implementation="eager"):
    torch.manual_seed(0)
    config_factory, inputs_factory, fields = CASES[head]
    config = config_factory()
    config._attn_implementation = attn_implementation
    return head(config).eval(), inputs_factory(), fields


def _field(output, dotted):
    for name in dotted.split("."):
        output = getattr(output, name)
    return output


# ------------------------------------------------------------------------------------------------------------------
# signatures
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS, ids=_ids)
def test_forward_signature_is_explicit_with_the_main_input_first(head):
    parameters = list(inspect.signature(head.forward).parameters.values())[1:]  # without self
    catch_alls = [p.name for p in parameters if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert not catch_alls, f"{head.__name__}.forward takes {catch_alls}: name every input"
    assert parameters[0].name == head.main_input_name, (parameters[0].name, head.main_input_name)
    names = [p.name for p in parameters]
    assert {"output_attentions", "output_hidden_states", "return_dict"} <= set(names)


# ------------------------------------------------------------------------------------------------------------------
# hidden states and attentions
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS, ids=_ids)
def test_hidden_states_and_attentions_are_returned_when_asked_only(head):
    model, inputs, (hidden_fields, attention_fields) = _build(head)
    with torch.no_grad():
        plain = model(**inputs)
        asked = model(**inputs, output_hidden_states=True, output_attentions=True)
    for name in hidden_fields + attention_fields:
        assert _field(plain, name) is None, f"{name} returned without being asked"
        value = _field(asked, name)
        assert value is not None and len(value) > 0, f"{name} missing with output_*=True"
        assert all(torch.is_tensor(v) or isinstance(v, tuple) for v in value)


@pytest.mark.parametrize("head", HEADS, ids=_ids)
def test_return_dict_false_gives_a_tuple(head):
    model, inputs, _ = _build(head)
    with torch.no_grad():
        torch.manual_seed(0)  # BLIP samples hard negatives
        as_dict = model(**inputs)
        torch.manual_seed(0)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    first = next(v for v in as_dict.values() if v is not None)
    torch.testing.assert_close(as_tuple[0], first)


# ------------------------------------------------------------------------------------------------------------------
# attention implementations
# ------------------------------------------------------------------------------------------------------------------


def _tensors(output):
    """Every tensor of an output except attention weights (SDPA returns none), flattened."""
    found = {}
    for name, value in output.items():
        if "attentions" in name:
            continue
        if torch.is_tensor(value) and value.is_floating_point():
            found[name] = value
        elif hasattr(value, "items"):
            found.update({f"{name}.{k}": v for k, v in _tensors(value).items()})
    return found


@pytest.mark.parametrize("head", HEADS, ids=_ids)
def test_eager_and_sdpa_are_accepted_and_agree(head):
    model, inputs, _ = _build(head)
    if not model._supports_sdpa:
        # transformers' own classes under it have only an eager attention (docs/outputs.md): SDPA is refused clearly
        with pytest.raises(ValueError, match="scaled_dot_product_attention"):
            model.set_attn_implementation("sdpa")
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        return
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa", "set_attn_implementation('sdpa') was refused"
    with torch.no_grad():
        torch.manual_seed(0)
        sdpa = _tensors(model(**inputs))
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", "set_attn_implementation('eager') was refused"
    with torch.no_grad():
        torch.manual_seed(0)
        eager = _tensors(model(**inputs))
    assert eager.keys() == sdpa.keys() and eager
    for name in eager:
        torch.testing.assert_close(sdpa[name], eager[name], atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------------------------
# _no_split_modules
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS, ids=_ids)
def test_no_split_modules_name_classes_the_model_holds(head):
    model, _, _ = _build(head)
    held = {type(module).__name__ for module in model.modules()}
    # the class's own declaration; post_init adds those of transformers' sub-models (e.g. CLIPTextModel's)
    named = set(head._no_split_modules or ())
    assert named, f"{head.__name__} declares no _no_split_modules"
    assert named <= held, f"{sorted(named - held)} are not classes of {head.__name__}"


# ------------------------------------------------------------------------------------------------------------------
# resize_token_embeddings
# ------------------------------------------------------------------------------------------------------------------

MLM_HEADS = {
    UniterForPreTraining: "mlm_logits",
    VilbertForPreTraining: "mlm_logits",
    VilbertForMultiTask: "mlm_logits",
    ErnieVilForPreTraining: "mlm_logits",
    OscarForPreTraining: "mlm_logits",
    VisualBertForPreTraining: "prediction_logits",
    LxmertForPreTraining: "prediction_logits",
}


@pytest.mark.parametrize("head", sorted(MLM_HEADS, key=_ids), ids=_ids)
def test_resize_token_embeddings_resizes_the_mlm_decoder_and_bias_and_round_trips(head, tmp_path):
    model, inputs, _ = _build(head)
    old_vocab = model.config.vocab_size
    new_vocab = old_vocab + 8
    model.resize_token_embeddings(new_vocab)
    decoder = model.get_output_embeddings()
    assert decoder.weight.shape[0] == new_vocab
    assert decoder.weight is model.get_input_embeddings().weight
    if decoder.bias is not None:
        assert decoder.bias.shape == (new_vocab,)
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][:, 1] = new_vocab - 1  # a new token id
    with torch.no_grad():
        logits = getattr(model(**inputs), MLM_HEADS[head])
    assert logits.shape[-1] == new_vocab and torch.isfinite(logits).all()

    model.save_pretrained(tmp_path)
    reloaded = head.from_pretrained(tmp_path).eval()
    assert reloaded.config.vocab_size == new_vocab
    with torch.no_grad():
        torch.testing.assert_close(getattr(reloaded(**inputs), MLM_HEADS[head]), logits)
