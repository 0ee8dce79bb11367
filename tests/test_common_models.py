"""One common model test suite over the registry: every check below runs for every (architecture, head) that
`hf_vlp.registry.ARCHITECTURES` declares, from the spec alone (config class, small sizes, example inputs, Auto
classes, LoRA preset), as transformers' common model tests and timm's `tests/test_models.py` do.

Models are the spec's small sizes shrunk further (width 32, two heads, at most two layers, a 99-word vocabulary, 24
region features) with every dropout at 0, so train-mode passes are deterministic; inputs are the spec's
`example_inputs` (labels included), batch 2, 7 tokens, 3 regions. A check that cannot apply to a head skips with the
reason; a real defect that is not fixed yet is a strict xfail naming it (see `KNOWN_DEFECTS`).

The checks: save/load and Auto-class round trips; SDPA = eager; gradient checkpointing (non-reentrant and reentrant)
= no checkpointing; padded tokens / regions and batch neighbours leave an example's outputs unchanged; an explicit
forward signature, hidden states / attentions returned when asked only, `return_dict=False`, `_no_split_modules`
(transformers' conventions); `resize_token_embeddings` for every head with a language-model decoder; bf16 autocast;
the spec's LoRA preset trains and merges; a bad visual input is a `ValueError` naming the argument.

Architecture-specific behaviour (fixture parity, objectives, generation, quirks) stays in each architecture's file.
"""

import copy
import inspect

import pytest
import torch
import transformers

import hf_vlp
from hf_vlp.recipes import build_config
from hf_vlp.registry import ARCHITECTURES
from hf_vlp.spec import InputKind

SPECS = sorted(ARCHITECTURES.values(), key=lambda spec: spec.name)
HEADS = [(spec.name, task.value) for spec in SPECS for task in spec.heads]
TEXT_LENGTH, REGIONS, VOCAB, FEATURES = 7, 3, 99, 24  # distinct from every other dimension, so shapes tell them apart
EXTRA_TOKENS, EXTRA_REGIONS = 2, 3  # padding check

# (arch, task, check) -> the defect that makes the check fail (strict xfail: fixing the defect makes it pass)
KNOWN_DEFECTS = {
    ("blip", "retrieval", "outputs"): (
        "BlipForImageTextRetrieval(return_loss=True) returns BlipRetrievalTrainingOutput, which drops the hidden "
        "states and attentions that output_hidden_states / output_attentions ask for (modeling/blip/modeling_blip.py)"
    ),
    ("blip", "pretraining", "lora"): (
        "BlipForPreTraining._momentum_update pairs online and momentum parameters by position; LoRA adds parameters "
        "to the online encoders only, so the EMA update raises 'different parameter lists' (modeling/blip)"
    ),
    ("switch_transformers", "seq2seq", "gradient_checkpointing_reentrant"): (
        "under use_reentrant=True the loss is equal but 52 gradients (shared embeddings, attention projections) differ "
        "from the unchecked run in transformers' Switch Transformers blocks; non-reentrant checkpointing is exact"
    ),
    **{
        (arch, task, "bad_input"): (
            f"transformers' own {name} (re-exported by hf_vlp) reports a wrong pixel shape without naming "
            "`pixel_values` ('not enough values to unpack' / 'number of images')"
        )
        for arch, task, name in [
            ("vilt", "vqa", "ViltForQuestionAnswering"),
            ("vilt", "nlvr2", "ViltForImagesAndTextClassification"),
            ("vit", "classification", "ViTForImageClassification"),
            ("vit", "base", "ViTModel"),
        ]
    },
}


def _cases(check, only=None):
    """(arch, task) parametrizations of `check`, those of `KNOWN_DEFECTS` marked strict xfail."""
    cases = []
    for arch, task in HEADS:
        if only is not None and not only(arch, task):
            continue
        defect = KNOWN_DEFECTS.get((arch, task, check))
        marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
        cases.append(pytest.param(arch, task, marks=marks, id=f"{arch}-{task}"))
    return cases


# ------------------------------------------------------------------------------------------------------------------
# tiny models and inputs from the spec
# ------------------------------------------------------------------------------------------------------------------

_WIDTH = {
    "hidden_size": 32,
    "v_hidden_size": 32,
    "co_hidden_size": 32,
    "bi_hidden_size": 32,
    "d_model": 32,
    "pooler_output_size": 32,
    "intermediate_size": 64,
    "v_intermediate_size": 64,
    "co_intermediate_size": 64,
    "d_ff": 64,
    "d_kv": 16,
}


def _shrink(sizes):
    """The spec's small sizes made tinier: width 32, two attention heads, at most two layers per stack."""
    tiny = {}
    for name, value in sizes.items():
        if isinstance(value, dict):
            value = _shrink(value)
        elif name in _WIDTH:
            value = _WIDTH[name]
        elif name.endswith("num_attention_heads") or name == "num_heads":
            value = 2
        elif "layers" in name and isinstance(value, int) and not name.startswith("num_sparse"):
            value = min(value, 2)
        tiny[name] = value
    return tiny


def _no_dropout(config):
    """Every dropout (and Switch's router jitter) at 0, in the config and its sub-configs."""
    for name, value in list(vars(config).items()):
        if isinstance(value, transformers.PretrainedConfig):
            _no_dropout(value)
        elif isinstance(value, float) and ("dropout" in name or name == "router_jitter_noise"):
            setattr(config, name, 0.0)
    return config


def tiny_config(arch, task):
    spec = hf_vlp.get_spec(arch)
    config = build_config(
        arch,
        tokenizer=[None] * VOCAB if spec.vocab_size_field else None,  # only its length is read
        visual_feat_dim=FEATURES if spec.feature_size_field else None,
        sizes=_shrink(spec.small_sizes),
        **spec.head(task).config_overrides,
    )
    return _no_dropout(config)


def tiny_model(arch, task, attn_implementation=None):
    torch.manual_seed(0)
    config = tiny_config(arch, task)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return hf_vlp.get_spec(arch).model_class(task)(config).eval()


def tiny_inputs(arch, task, config, batch_size=2, seed=0):
    return hf_vlp.get_spec(arch).example_inputs_for(
        config, task, batch_size=batch_size, text_length=TEXT_LENGTH, regions=REGIONS, seed=seed
    )


def _run(model, inputs, **kwargs):
    torch.manual_seed(0)  # heads that sample (BLIP's hard negatives) sample the same
    return model(**inputs, **kwargs)


def _field(output, dotted):
    for name in dotted.split("."):
        output = getattr(output, name)
    return output


def _tensors(output, prefix=""):
    """Every floating tensor of an output except attentions and hidden-state tuples, by dotted name."""
    found = {}
    items = output.items() if hasattr(output, "items") else ()
    for name, value in items:
        if "attentions" in name or name.endswith("hidden_states"):
            continue
        if torch.is_tensor(value) and value.is_floating_point():
            found[prefix + name] = value
        elif hasattr(value, "items"):
            found.update(_tensors(value, f"{prefix}{name}."))
    return found


def _scalar(output):
    """The loss, or (heads without one) a sum over the outputs, to train or take gradients of."""
    if getattr(output, "loss", None) is not None:
        return output.loss
    return sum(value.float().mean() for value in _tensors(output).values())


def _assert_same(actual, expected, atol=1e-5, rtol=1e-4):
    assert expected and actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=rtol, msg=name)


def _map_tensors(value, function):
    """`function` applied to every tensor of a nested dict / tuple / list."""
    if torch.is_tensor(value):
        return function(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, function) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, function) for v in value)
    return value


# ------------------------------------------------------------------------------------------------------------------
# 1. save / load and Auto classes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", _cases("save_load"))
def test_save_pretrained_from_pretrained_and_auto_classes_give_identical_outputs(arch, task, tmp_path):
    spec = hf_vlp.get_spec(arch)
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    with torch.no_grad():
        expected = _tensors(_run(model, inputs))
    model.save_pretrained(tmp_path)
    head = spec.head(task)
    loaders = [type(model)]
    loaders += [getattr(transformers, name) for name in head.auto_classes + head.opt_in_auto_classes]
    for loader in loaders:
        opt_in = loader.__name__ in head.opt_in_auto_classes
        if opt_in:
            hf_vlp.use_hf_vlp_classes_for_transformers_models()
        try:
            reloaded = loader.from_pretrained(tmp_path).eval()
        finally:
            if opt_in:
                hf_vlp.use_hf_vlp_classes_for_transformers_models(False)
        assert type(reloaded) is type(model), (loader.__name__, type(reloaded))
        with torch.no_grad():  # the same weights; a re-laid-out (e.g. tied) weight may change the last bit
            _assert_same(_tensors(_run(reloaded, inputs)), expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# 2. attention implementations
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", _cases("sdpa"))
def test_sdpa_and_eager_are_accepted_and_agree(arch, task):
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    if not model._supports_sdpa:
        # transformers' own classes under it have only an eager attention (docs/outputs.md): transformers refuses SDPA,
        # with a ValueError or (classes outside its attention interface) a logged refusal that keeps eager
        try:
            model.set_attn_implementation("sdpa")
        except ValueError as error:
            assert "scaled_dot_product_attention" in str(error) or "sdpa" in str(error), error
        assert model.config._attn_implementation == "eager", "SDPA was accepted by a model without an SDPA attention"
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        return
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa", "set_attn_implementation('sdpa') was refused"
    with torch.no_grad():
        sdpa = _tensors(_run(model, inputs))
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager", "set_attn_implementation('eager') was refused"
    with torch.no_grad():
        eager = _tensors(_run(model, inputs))
    _assert_same(sdpa, eager)


# ------------------------------------------------------------------------------------------------------------------
# 3. gradient checkpointing
# ------------------------------------------------------------------------------------------------------------------


def _loss_and_gradients(model, inputs):
    model.train()
    model.zero_grad()
    loss = _scalar(_run(model, inputs))
    loss.backward()
    # a parameter the loss does not reach has no gradient, or (reentrant checkpointing) a zero one: the same thing
    gradients = {
        name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return loss.detach(), gradients


@pytest.mark.parametrize(
    "arch, task, reentrant",
    [
        pytest.param(*case.values, False, marks=case.marks, id=f"{case.id}-non_reentrant")
        for case in _cases("gradient_checkpointing")
    ]
    + [
        pytest.param(*case.values, True, marks=case.marks, id=f"{case.id}-reentrant")
        for case in _cases("gradient_checkpointing_reentrant")
    ],
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(arch, task, reentrant):
    model = tiny_model(arch, task)
    assert model.supports_gradient_checkpointing, f"{type(model).__name__} does not support gradient checkpointing"
    checkpointed = copy.deepcopy(model)
    inputs = tiny_inputs(arch, task, model.config)
    loss, gradients = _loss_and_gradients(model, inputs)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert checkpointed.is_gradient_checkpointing
    checkpointed_loss, checkpointed_gradients = _loss_and_gradients(checkpointed, inputs)
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-5, rtol=1e-5)
    assert any(gradient.any() for gradient in gradients.values()), "no parameter received a gradient"
    _assert_same(checkpointed_gradients, gradients)


# ------------------------------------------------------------------------------------------------------------------
# 4. padding invariance
# ------------------------------------------------------------------------------------------------------------------

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _pad_text(name, value, pad_token_id):
    if value.shape[-1] != TEXT_LENGTH:
        return value
    if name in TEXT_INPUTS:
        fill = pad_token_id if name == "input_ids" else 0
    elif name == "labels":  # per-token labels (masked LM, captions)
        fill = -100
    else:
        return value
    return torch.cat([value, value.new_full((*value.shape[:-1], EXTRA_TOKENS), fill)], dim=-1)


def _pad_regions(value, rng):
    """Extra regions at the end of a region tensor (R on dim -1 or -2); masks get 0, features / boxes random."""
    if value.ndim >= 2 and value.shape[-2] == REGIONS and value.shape[-1] != REGIONS:
        extra = torch.rand(*value.shape[:-2], EXTRA_REGIONS, value.shape[-1], generator=rng).to(value.dtype)
        if value.shape[-1] == 4:  # boxes x1 y1 x2 y2 inside [0, 1]
            extra = torch.cat([extra[..., :2] * 0.5, extra[..., :2] * 0.5 + 0.4], dim=-1)
        return torch.cat([value, extra], dim=-2)
    if value.shape[-1] == REGIONS:
        return torch.cat([value, value.new_zeros(*value.shape[:-1], EXTRA_REGIONS)], dim=-1)
    return value


def _padded(arch, inputs, config):
    text_config = getattr(config, "text_config", None) or config
    pad_token_id = getattr(text_config, "pad_token_id", None) or 0
    padded = {
        name: _pad_text(name, value, pad_token_id) if torch.is_tensor(value) else value
        for name, value in inputs.items()
    }
    if hf_vlp.get_spec(arch).inputs is InputKind.REGIONS:
        rng = torch.Generator().manual_seed(1)
        for name, value in inputs.items():
            if name.startswith("visual_") or name == "obj_labels":  # LXMERT's per-region targets
                padded[name] = _map_tensors(value, lambda tensor: _pad_regions(tensor, rng))
    return padded


# (arch, task) -> outputs that depend on the number of padded slots by the objective's definition, and why
PADDING_DEPENDENT = {
    ("lxmert", "pretraining"): (
        ("loss", "obj_loss", "attr_loss", "feat_loss"),
        "LXMERT's region losses average over every region slot, padded ones included (original and transformers)",
    ),
    ("switch_transformers", "seq2seq"): (
        ("loss", "encoder_z_loss", "encoder_aux_loss", "router_z_loss", "router_aux_loss"),
        "the router z-loss and load-balancing loss average over every encoder token, padding included (transformers)",
    ),
}


@pytest.mark.parametrize("arch, task", _cases("padding"))
def test_padded_tokens_and_regions_leave_real_positions_unchanged(arch, task):
    """Outputs of the same shape must be equal; outputs that grew by the padding (per-token / per-region logits) must
    be equal at the real positions. Single-stream sequences ([text; regions], grown by both) are not aligned."""
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    grown = {EXTRA_TOKENS: TEXT_LENGTH}
    if hf_vlp.get_spec(arch).inputs is InputKind.REGIONS:
        grown[EXTRA_REGIONS] = REGIONS
    with torch.no_grad():
        expected = _tensors(_run(model, inputs))
        actual = _tensors(_run(model, _padded(arch, inputs, model.config)))
    padding_dependent = PADDING_DEPENDENT.get((arch, task), ((), ""))[0]
    compared = 0
    for name, value in expected.items():
        if name in padding_dependent:
            continue
        padded = actual[name]
        if padded.shape != value.shape:
            dims = [d for d in range(value.ndim) if padded.shape[d] != value.shape[d]]
            if (
                len(dims) != 1
                or padded.ndim != value.ndim
                or grown.get(padded.shape[dims[0]] - value.shape[dims[0]]) != value.shape[dims[0]]
            ):
                continue  # a single-stream sequence: grew by text and regions together
            padded = padded.narrow(dims[0], 0, value.shape[dims[0]])
        torch.testing.assert_close(padded, value, atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert compared, f"no output of {type(model).__name__} could be compared: {sorted(expected)}"


# ------------------------------------------------------------------------------------------------------------------
# 5. batch independence
# ------------------------------------------------------------------------------------------------------------------

# outputs that depend on the rest of the batch by design (in-batch negatives, contrastive logits)
BATCH_COUPLED = ("loss", "logits_per_image", "logits_per_text", "itc", "itm")


@pytest.mark.parametrize("arch, task", _cases("batch"))
def test_an_example_alone_gives_the_outputs_it_gives_inside_a_batch(arch, task):
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    alone = _map_tensors(inputs, lambda tensor: tensor[1:2] if tensor.ndim else tensor)  # the padded example
    with torch.no_grad():
        batched = _tensors(_run(model, inputs))
        single = _tensors(_run(model, alone))
    compared = 0
    for name, value in batched.items():
        if any(part in name.rsplit(".", 1)[-1] for part in BATCH_COUPLED) or value.ndim == 0:
            continue
        if value.shape[0] != 2 or single[name].shape != (1, *value.shape[1:]):
            continue
        torch.testing.assert_close(single[name], value[1:2], atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert compared, f"no per-example output of {type(model).__name__}: {sorted(batched)}"


# ------------------------------------------------------------------------------------------------------------------
# 6. signatures, hidden states, attentions, return_dict, _no_split_modules
# ------------------------------------------------------------------------------------------------------------------

SINGLE_STREAM = (("hidden_states",), ("attentions",))
TWO_STREAM = (
    ("text_hidden_states", "visual_hidden_states"),
    ("text_attentions", "visual_attentions", "cross_attentions"),
)
CLIP_FIELDS = (
    ("text_model_output.hidden_states", "vision_model_output.hidden_states"),
    ("text_model_output.attentions", "vision_model_output.attentions"),
)
BLIP_FIELDS = (("vision_hidden_states", "text_hidden_states"), ("vision_attentions", "text_attentions"))
# architecture, or (architecture, task) -> (hidden-state fields, attention fields); dotted fields are nested outputs
OUTPUT_FIELDS = {
    "uniter": SINGLE_STREAM,
    "oscar": SINGLE_STREAM,
    "visual_bert": SINGLE_STREAM,
    "vilt": SINGLE_STREAM,
    "vit": SINGLE_STREAM,
    "vit_representation": SINGLE_STREAM,
    "soho": SINGLE_STREAM,
    "vilbert": TWO_STREAM,
    "ernie_vil": TWO_STREAM,
    "meter": TWO_STREAM,
    "simvlm": (
        ("encoder_hidden_states", "decoder_hidden_states"),
        ("encoder_attentions", "decoder_attentions", "cross_attentions"),
    ),
    "lxmert": (
        ("language_hidden_states", "vision_hidden_states"),
        ("language_attentions", "vision_attentions", "cross_encoder_attentions"),
    ),
    "clip": CLIP_FIELDS,
    "filip": CLIP_FIELDS,
    "clip_resnet": (CLIP_FIELDS[0], ("text_model_output.attentions",)),  # a ResNet tower has no attention
    "switch_transformers": (
        ("encoder_hidden_states", "decoder_hidden_states"),
        ("encoder_attentions", "decoder_attentions", "cross_attentions"),
    ),
    ("blip", "pretraining"): BLIP_FIELDS,
    ("blip", "vqa"): BLIP_FIELDS,
    ("blip", "retrieval"): SINGLE_STREAM,  # the ViT's layers (transformers' output)
    ("blip", "captioning"): SINGLE_STREAM,
    ("blip", "nlvr2"): SINGLE_STREAM,  # the text encoder's layers
    "unit": (
        ("encoder_hidden_states", "text_hidden_states", "decoder_hidden_states"),
        ("encoder_attentions", "text_attentions", "decoder_attentions", "cross_attentions"),
    ),
}


def _output_fields(arch, task):
    return OUTPUT_FIELDS.get((arch, task)) or OUTPUT_FIELDS[arch]


@pytest.mark.parametrize("arch, task", _cases("signature"))
def test_forward_signature_is_explicit_with_the_main_input_first(arch, task):
    head = hf_vlp.get_spec(arch).model_class(task)
    if head.__module__.startswith("transformers."):
        pytest.skip(f"{head.__name__} is transformers' own class (its forward takes **kwargs by transformers' design)")
    parameters = list(inspect.signature(head.forward).parameters.values())[1:]  # without self
    catch_alls = [p.name for p in parameters if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    assert not catch_alls, f"{head.__name__}.forward takes {catch_alls}: name every input"
    assert parameters[0].name == head.main_input_name, (parameters[0].name, head.main_input_name)
    assert {"output_attentions", "output_hidden_states", "return_dict"} <= {p.name for p in parameters}


@pytest.mark.parametrize("arch, task", _cases("push_to_hub"))
def test_push_to_hub_of_an_hf_vlp_class_is_the_complete_repo(arch, task):
    from hf_vlp.hub_mixin import HubPushMixin

    head = hf_vlp.get_spec(arch).model_class(task)
    if head.__module__.startswith("transformers."):
        pytest.skip(f"{head.__name__} is transformers' own class: its push_to_hub is transformers' upload")
    # HubPushMixin before PreTrainedModel: model.push_to_hub uploads card, processor and remote code
    # (tests/test_hub_safety.py checks the files)
    assert head.push_to_hub is HubPushMixin.push_to_hub, [cls.__name__ for cls in head.__mro__]


@pytest.mark.parametrize("arch, task", _cases("outputs"))
def test_hidden_states_and_attentions_are_returned_when_asked_only(arch, task):
    model = tiny_model(arch, task, attn_implementation="eager")
    inputs = tiny_inputs(arch, task, model.config)
    hidden_fields, attention_fields = _output_fields(arch, task)
    with torch.no_grad():
        plain = _run(model, inputs)
        asked = _run(model, inputs, output_hidden_states=True, output_attentions=True)
        hidden_only = _run(model, inputs, output_hidden_states=True)
    for name in hidden_fields + attention_fields:
        assert _field(plain, name) is None, f"{name} returned without being asked"
        value = _field(asked, name)
        assert value is not None and len(value) > 0, f"{name} missing with output_*=True"
        assert all(torch.is_tensor(v) or isinstance(v, tuple) for v in value)
    for name in hidden_fields:
        assert _field(hidden_only, name) is not None, f"{name} missing with output_hidden_states=True"
    for name in attention_fields:
        assert _field(hidden_only, name) is None, f"{name} returned with output_attentions=False"


@pytest.mark.parametrize("arch, task", _cases("return_dict"))
def test_return_dict_false_gives_a_tuple(arch, task):
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    with torch.no_grad():
        as_dict = _run(model, inputs)
        as_tuple = _run(model, inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], next(v for v in as_dict.values() if v is not None))


@pytest.mark.parametrize("arch, task", _cases("no_split_modules"))
def test_no_split_modules_name_classes_the_model_holds(arch, task):
    model = tiny_model(arch, task)
    held = {type(module).__name__ for module in model.modules()}
    # the class's own declaration; post_init adds those of transformers' sub-models (e.g. CLIPTextModel's)
    named = set(type(model)._no_split_modules or ())
    assert named, f"{type(model).__name__} declares no _no_split_modules"
    assert named <= held, f"{sorted(named - held)} are not classes of {type(model).__name__}"


# ------------------------------------------------------------------------------------------------------------------
# 7. resize_token_embeddings
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", _cases("resize"))
def test_resize_token_embeddings_resizes_the_lm_decoder_and_round_trips(arch, task, tmp_path):
    model = tiny_model(arch, task)
    if model.get_output_embeddings() is None:
        pytest.skip(f"{type(model).__name__} has no language-model head (get_output_embeddings() is None)")
    inputs = tiny_inputs(arch, task, model.config)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    new_vocab = old_vocab + 8
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        before = _tensors(_run(model, inputs))
    model.resize_token_embeddings(new_vocab)
    decoder = model.get_output_embeddings()
    assert model.get_input_embeddings().weight.shape[0] == new_vocab
    assert decoder.weight.shape[0] == new_vocab
    assert (decoder.weight is model.get_input_embeddings().weight) == tied, "resizing changed the weight tying"
    if getattr(decoder, "bias", None) is not None:
        assert decoder.bias.shape == (new_vocab,)
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][..., 1] = new_vocab - 1  # a new token id
    with torch.no_grad():
        outputs = _tensors(_run(model, inputs))
    # every vocabulary-sized output (a head may have others: VilbertForMultiTask's VQA task) follows the new size
    vocab_sized = [name for name, value in before.items() if value.ndim and value.shape[-1] == old_vocab]
    assert all(outputs[name].shape[-1] == new_vocab for name in vocab_sized), vocab_sized
    assert all(torch.isfinite(value).all() for value in outputs.values())

    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.get_input_embeddings().weight.shape[0] == new_vocab
    with torch.no_grad():
        _assert_same(_tensors(_run(reloaded, inputs)), outputs, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# 8. bf16 autocast
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", _cases("bf16"))
def test_bf16_autocast_forward_and_backward_are_finite(arch, task):
    model = tiny_model(arch, task).train()
    inputs = tiny_inputs(arch, task, model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = _run(model, inputs)
    loss = _scalar(output)
    assert torch.isfinite(loss), loss
    if getattr(output, "loss", None) is not None:
        assert output.loss.dtype == torch.float32, "the loss must be computed in float32 under autocast"
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert gradients
    bad = [name for name, grad in gradients.items() if not torch.isfinite(grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"


# ------------------------------------------------------------------------------------------------------------------
# 9. the spec's LoRA preset
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, task", _cases("lora"))
def test_lora_preset_attaches_trains_and_merges(arch, task):
    from peft import LoraConfig, get_peft_model

    spec = hf_vlp.get_spec(arch)
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    names = {name for name, _ in model.named_modules()}
    to_save = [m for m in spec.lora_modules_to_save if any(n == m or n.endswith("." + m) for n in names)]
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=spec.lora_target_modules, modules_to_save=to_save or None)
    )
    lora = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert lora and all(p.requires_grad for p in lora.values())
    before = {name: p.detach().clone() for name, p in lora.items()}
    peft_model.train()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at 0: the first step moves it, the second also moves lora_A
        optimizer.zero_grad()
        _scalar(_run(peft_model, inputs)).backward()
        optimizer.step()
    changed = [name for name, p in lora.items() if not torch.equal(p.detach(), before[name])]
    assert changed, "no LoRA weight changed after training"
    peft_model.eval()
    with torch.no_grad():
        unmerged = _tensors(_run(peft_model, inputs))
        merged_model = peft_model.merge_and_unload()
        assert not any("lora_" in name for name, _ in merged_model.named_parameters())
        merged = _tensors(_run(merged_model, inputs))
    _assert_same(merged, unmerged, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# 10. bad input
# ------------------------------------------------------------------------------------------------------------------


# architectures whose forward reads text alone when the visual input is left out (not an error), and why
VISUAL_INPUT_OPTIONAL = {"visual_bert": "VisualBERT (as transformers') runs text-only when `visual_embeds` is None"}


def _bad_inputs(arch, inputs):
    """(description, inputs, argument the error must name) for the architecture's non-text input."""
    kind = hf_vlp.get_spec(arch).inputs
    if kind is InputKind.REGIONS:
        name = "visual_feats" if "visual_feats" in inputs else "visual_embeds"
        features = inputs[name]
        wrong_size = {**inputs, name: torch.cat([features, features[..., :1]], dim=-1)}
        missing = {k: v for k, v in inputs.items() if k != name}
        cases = [("wrong feature size", wrong_size, name)]
        return cases if arch in VISUAL_INPUT_OPTIONAL else [*cases, ("missing", missing, name)]
    if kind is InputKind.PIXELS:
        pixels = inputs["pixel_values"]
        wrong_channels = {**inputs, "pixel_values": pixels.narrow(-3, 0, 2)}
        flat = {**inputs, "pixel_values": pixels.flatten(-2)}
        # transformers' own pixel checks (ViT, ViLT) say "pixel values"
        return [("two channels", wrong_channels, "pixel.values"), ("no height and width", flat, "pixel.values")]
    return []


@pytest.mark.parametrize("arch, task", _cases("bad_input"))
def test_bad_visual_input_raises_a_value_error_naming_the_argument(arch, task):
    if hf_vlp.get_spec(arch).inputs is InputKind.TEXT:
        pytest.skip(f"{arch} reads text only: no visual input to get wrong")
    model = tiny_model(arch, task)
    inputs = tiny_inputs(arch, task, model.config)
    for description, bad, argument in _bad_inputs(arch, inputs):
        with pytest.raises(ValueError, match=argument), torch.no_grad():
            _run(model, bad)
            pytest.fail(f"{description}: no ValueError")  # reached only when the model accepted the bad input
