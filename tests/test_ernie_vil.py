"""ERNIE-ViL: Paddle tensor format, the parameter-folder converter (round trip in the release layout and an
independent re-implementation of the Paddle forward), pretraining with scene-graph prediction, heads, Auto classes."""

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from hf_vlp.conversion import ernie_vil as conversion
from hf_vlp.conversion.common import ConversionError, verify
from hf_vlp.conversion.paddle_format import (
    _varint,
    parse_tensor_desc,
    read_lod_tensor,
    read_paddle_combined,
    read_paddle_params,
    saved_variable_names,
    write_lod_tensor,
    write_paddle_params,
)
from hf_vlp.modeling.ernie_vil import (
    ErnieVilConfig,
    ErnieVilForImageTextRetrieval,
    ErnieVilForMultipleChoice,
    ErnieVilForPreTraining,
    ErnieVilForReferringExpression,
    ErnieVilForVisualQuestionAnswering,
    ErnieVilModel,
    SceneGraphTargetBuilder,
    parse_scene_graph,
)

FEATURES = 12


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread; on a shared, loaded CPU two OpenMP threads spin-wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    sizes = dict(
        vocab_size=60,
        hidden_size=16,
        num_attention_heads=2,
        max_position_embeddings=24,
        v_feature_size=FEATURES,
        v_hidden_size=24,
        v_num_attention_heads=3,
        v_intermediate_size=20,
        co_hidden_size=8,
        co_num_attention_heads=2,
        v_biattention_id=[0, 2],
        t_biattention_id=[1, 3],
        class_size=7,
        num_labels=5,
        vqa_hidden_size=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ErnieVilConfig(**{**sizes, **overrides})


def tiny_batch(batch=3, length=6, regions=5, vocab=60, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, regions, 2, generator=generator) * 0.5
    visual_pos = torch.cat([corner, corner + 0.4], dim=-1)
    visual_pos[:, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, -2:] = 0
    visual_attention_mask = torch.ones(batch, regions, dtype=torch.long)
    visual_attention_mask[-1, -2:] = 0
    return dict(
        input_ids=torch.randint(5, vocab, (batch, length), generator=generator),
        attention_mask=attention_mask,
        token_type_ids=torch.zeros(batch, length, dtype=torch.long),
        visual_feats=torch.rand(batch, regions, FEATURES, generator=generator),
        visual_pos=visual_pos,
        visual_attention_mask=visual_attention_mask,
    )


def original_json(config):
    return {k: v for k, v in config.to_dict().items() if k in conversion.ORIGINAL_KEYS}


def release_folder(tmp_path, model, task_prefix="vcr"):
    """The layout of an extracted release archive: params/ + ernie_vil_config.*.json (+ vocab.txt)."""
    conversion.save_paddle_params(model, tmp_path / "params", task_prefix=task_prefix)
    (tmp_path / "ernie_vil_config.tiny.json").write_text(json.dumps(original_json(model.config)))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    return tmp_path


# ------------------------------------------------------------------------------------------------------------------
# Paddle tensor file format
# ------------------------------------------------------------------------------------------------------------------


def test_tensor_file_byte_layout():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = write_lod_tensor(array)
    desc = bytes([0x08, 5, 0x10, 2, 0x10, 3])  # data_type=FP32, dims=[2, 3] (unpacked)
    expected = struct.pack("<IQ", 0, 0) + struct.pack("<Ii", 0, len(desc)) + desc + array.tobytes()
    assert data == expected
    read, lod = read_lod_tensor(expected)
    np.testing.assert_array_equal(read, array)
    assert lod == []


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_])
def test_tensor_round_trip_of_every_dtype(dtype):
    array = (np.random.default_rng(0).random((3, 1, 4)) * 5).astype(dtype)
    read, _ = read_lod_tensor(write_lod_tensor(array))
    assert read.dtype == np.dtype(dtype) and read.shape == (3, 1, 4)
    np.testing.assert_array_equal(read, array)


def test_lod_packed_dims_and_bfloat16_are_read():
    lod = [[0, 2, 5]]
    array = np.ones((5, 2), np.float32)
    read, read_lod = read_lod_tensor(write_lod_tensor(array, lod))
    assert read_lod == lod and read.shape == (5, 2)
    assert parse_tensor_desc(bytes([0x08, 3, 0x12, 2, 4, 7])) == (3, [4, 7])  # packed dims
    values = np.array([1.5, -2.0], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    desc = bytes([0x08, 22, 0x10, 2])
    data = struct.pack("<IQ", 0, 0) + struct.pack("<Ii", 0, len(desc)) + desc + bf16.tobytes()
    np.testing.assert_array_equal(read_lod_tensor(data)[0], values)


def test_malformed_tensor_files_raise():
    data = write_lod_tensor(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="truncated"):
        read_lod_tensor(data[:-1], name="w")
    with pytest.raises(ValueError, match="trailing"):
        read_lod_tensor(data + b"\0", name="w")
    with pytest.raises(ValueError, match="version"):
        read_lod_tensor(struct.pack("<I", 7) + data[4:], name="w")


def test_parameter_folder_round_trip(tmp_path):
    params = {
        "word_embedding": np.random.rand(4, 3).astype(np.float32),
        "encoder_layer_0_ffn_fc_0.b_0": np.zeros(5, np.float32),
    }
    write_paddle_params(tmp_path, params)
    (tmp_path / "__model__").write_bytes(b"program")  # program description files are skipped
    read = read_paddle_params(tmp_path)
    assert read.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(read[name], params[name])


def _field(number, payload):
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _var_desc(name, var_type=7, persistable=True):
    """framework.proto VarDesc: name = 1, type = 2 (VarType.type = 1), persistable = 3."""
    var_type_message = _varint(1 << 3) + _varint(var_type)
    return _field(1, name.encode()) + _field(2, var_type_message) + _varint(3 << 3) + _varint(int(persistable))


def _program_desc(variables):
    """ProgramDesc with one BlockDesc (idx = 1, parent_idx = 2, vars = 3)."""
    block = _varint(1 << 3) + _varint(0) + _varint(2 << 3) + _varint(0)
    block += b"".join(_field(3, _var_desc(*variable)) for variable in variables)
    return _field(1, block)


def write_combined(folder, params, extra_vars=()):
    """What `save_inference_model(..., params_filename="__params__")` writes: the tensors back to back in sorted
    name order, and the program description naming them (plus feed / fetch / non-persistable variables)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__params__").write_bytes(b"".join(write_lod_tensor(params[name]) for name in sorted(params)))
    (folder / "__model__").write_bytes(_program_desc([(name,) for name in reversed(list(params))] + list(extra_vars)))


def test_combined_parameter_files_are_read_with_the_names_of_their_program(tmp_path):
    params = {
        "word_embedding": np.random.rand(4, 3).astype(np.float32),
        "encoder_layer_0_ffn_fc_0.b_0": np.arange(5, dtype=np.float32),
        "pos_embedding": np.random.rand(2, 3).astype(np.float32),
    }
    # feed (9) / fetch (10) variables are persistable too, and activations are not: none is in the file
    write_combined(tmp_path, params, [("feed", 9), ("fetch", 10), ("tmp_0", 7, False)])
    assert saved_variable_names((tmp_path / "__model__").read_bytes()) == sorted(params)
    for read in (read_paddle_params(tmp_path), read_paddle_combined(tmp_path / "__params__", list(params))):
        assert read.keys() == params.keys()
        for name in params:
            np.testing.assert_array_equal(read[name], params[name])
    with pytest.raises(ValueError, match="holds 3 tensors but 2 variable names"):
        read_paddle_combined(tmp_path / "__params__", ["word_embedding", "pos_embedding"])
    (tmp_path / "__model__").unlink()
    with pytest.raises(ValueError, match="combined Paddle parameter file: the tensors carry no names"):
        read_paddle_combined(tmp_path / "__params__")


def test_a_release_with_combined_parameters_converts_like_the_per_variable_one(tmp_path):
    torch.manual_seed(0)
    model = ErnieVilForVisualQuestionAnswering(tiny_config()).eval()
    per_variable = conversion.convert(release_folder(tmp_path / "files", model))
    combined = tmp_path / "combined"
    write_combined(combined / "params", conversion.to_paddle_params(model))
    (combined / "ernie_vil_config.tiny.json").write_text(json.dumps(original_json(model.config)))
    for checkpoint in (combined, combined / "params" / "__params__"):
        converted = conversion.convert(checkpoint)
        for key, value in per_variable.state_dict().items():
            torch.testing.assert_close(converted.state_dict()[key], value, rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------------------------
# converter: release layout round trip, independent Paddle-semantics forward
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_class",
    [
        ErnieVilModel,
        ErnieVilForPreTraining,
        ErnieVilForVisualQuestionAnswering,
        ErnieVilForMultipleChoice,
        ErnieVilForImageTextRetrieval,
        ErnieVilForReferringExpression,
    ],
    ids=lambda c: c.__name__,
)
def test_release_layout_round_trip(tmp_path, model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config()).eval()
    converted = conversion.convert(release_folder(tmp_path, model, task_prefix="vcr_qa"))
    assert type(converted) is model_class
    ours, theirs = model.state_dict(), converted.state_dict()
    assert ours.keys() == theirs.keys()
    unnamed = [k for k in ours if k.startswith(("region_head.", "itm_head."))]  # no released Paddle names
    for key in ours:
        if key not in unnamed:
            torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0, msg=key)
    assert all(ours[k].shape == theirs[k].shape for k in unnamed)


def _layer_norm(x, params, name):
    return F.layer_norm(
        x, x.shape[-1:], params[name + "_layer_norm_scale"], params[name + "_layer_norm_bias"], eps=1e-5
    )


def _fc(x, params, name, weight=".w_0", bias=".b_0"):
    return x @ params[name + weight] + params[name + bias]


def _attention(queries, keys, bias, params, name, heads):
    """multi_head_attention of ernie-vil/model/vl_transformer_encoder.py: fc projections, q scaled by d_key**-0.5."""
    q, k, v = (_fc(x, params, f"{name}_{p}_fc") for x, p in ((queries, "query"), (keys, "key"), (keys, "value")))
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2) + bias[:, None], dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1)
    return _fc(out, params, f"{name}_output_fc")


def _ffn(x, params, name):
    return _fc(F.gelu(_fc(x, params, f"{name}_fc_0")), params, f"{name}_fc_1")


def _layer(x, bias, params, name, heads):
    attended = _layer_norm(
        x + _attention(x, x, bias, params, name + "_multi_head_att", heads), params, name + "_post_att"
    )
    return _layer_norm(attended + _ffn(attended, params, name + "_ffn"), params, name + "_post_ffn")


def paddle_reference_forward(params, config, feed):
    """ERNIE-ViL's forward written directly from ernie-vil/model/{ernie_vil,vl_transformer_encoder}.py on the Paddle
    parameter names (fc weights [in, out], masks (m_q m_k^T - 1) * 1e4 on the full grid, one tail layer per
    stream), in float64 — independent of hf_vlp's modules and key table."""
    p = {k: torch.from_numpy(v).double() for k, v in params.items()}
    text_mask, image_mask = feed["input_mask"].double(), feed["image_mask"].double()  # (B, T, 1), (B, R, 1)
    text = p["word_embedding"][feed["src_ids"][..., 0]] + p["pos_embedding"][feed["pos_ids"][..., 0]]
    text = _layer_norm(text + p["sent_embedding"][feed["sent_ids"][..., 0]], p, "pre_encoder")
    visual = _fc(feed["image_embeddings"].double(), p, "image_emb") + _fc(feed["image_loc"].double(), p, "image_loc")
    visual = _layer_norm(visual, p, "vl_pre_encoder")
    text_bias = (text_mask @ text_mask.transpose(1, 2) - 1) * 10000
    image_bias = (image_mask @ image_mask.transpose(1, 2) - 1) * 10000
    vl_bias = (image_mask @ text_mask.transpose(1, 2) - 1) * 10000  # (B, R, T)
    t_start = v_start = 0
    for block, (v_end, t_end) in enumerate(zip(config.v_biattention_id, config.t_biattention_id)):
        for i in range(t_start, t_end):
            text = _layer(text, text_bias, p, f"encoder_layer_{i}", config.num_attention_heads)
        for j in range(v_start, v_end):
            visual = _layer(visual, image_bias, p, f"encoder_vlayer_{j}", config.v_num_attention_heads)
        name, heads = f"encoder_colayer_{block}", config.co_num_attention_heads
        text_att = _attention(text, visual, vl_bias.transpose(1, 2), p, name + "_multi_head_att", heads)
        visual_att = _attention(visual, text, vl_bias, p, name + "_vl_multi_head_att", heads)
        text_att = _layer_norm(text + text_att, p, name + "_post_att")
        visual_att = _layer_norm(visual + visual_att, p, name + "_vl_post_att")
        text = _layer_norm(text_att + _ffn(text_att, p, name + "_ffn"), p, name + "_post_ffn")
        visual = _layer_norm(visual_att + _ffn(visual_att, p, name + "_vl_ffn"), p, name + "_vl_post_ffn")
        t_start, v_start = t_end, v_end
    text = _layer(text, text_bias, p, f"encoder_layer_{t_end}", config.num_attention_heads)
    visual = _layer(visual, image_bias, p, f"encoder_vlayer_{v_end}", config.v_num_attention_heads)
    pooled_text = torch.relu(_fc(text[:, 0], p, "pooled_fc_text"))
    pooled_image = torch.relu(_fc(visual[:, 0], p, "pooled_fc_image"))
    return dict(
        enc_out=text,
        enc_vl_out=visual,
        pooled_text=pooled_text,
        pooled_image=pooled_image,
        fused=pooled_text * pooled_image,
    )


def paddle_feed(batch):
    """hf_vlp inputs -> the original's feed (trailing 1-dims, float masks, 5-d locations)."""
    boxes = batch["visual_pos"]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    length = batch["input_ids"].shape[1]
    return dict(
        src_ids=batch["input_ids"][..., None],
        pos_ids=torch.arange(length).expand_as(batch["input_ids"])[..., None],
        sent_ids=batch["token_type_ids"][..., None],
        input_mask=batch["attention_mask"].float()[..., None],
        image_embeddings=batch["visual_feats"],
        image_loc=torch.cat([boxes, area[..., None]], dim=-1),
        image_mask=batch["visual_attention_mask"].float()[..., None],
    )


def test_converted_model_matches_an_independent_paddle_semantics_forward(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = ErnieVilModel(config)
    with torch.no_grad():  # non-trivial LayerNorm affine terms, so a swapped scale/bias would show
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    converted = conversion.convert(release_folder(tmp_path, model))
    batch = tiny_batch()
    reference = paddle_reference_forward(read_paddle_params(tmp_path / "params"), config, paddle_feed(batch))
    with torch.no_grad():
        ours = converted(**batch)
    text_valid, visual_valid = batch["attention_mask"].bool(), batch["visual_attention_mask"].bool()
    torch.testing.assert_close(
        ours.text_hidden_state[text_valid].double(), reference["enc_out"][text_valid], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        ours.visual_hidden_state[visual_valid].double(), reference["enc_vl_out"][visual_valid], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(ours.pooler_output.double(), reference["fused"], atol=1e-5, rtol=1e-5)

    # the same comparison through the --verify contract (docs/ernie_vil.md: what to dump from the Paddle program)
    fixture = tmp_path / "fixture"
    fixture.mkdir()
    save_file({k: v.contiguous() for k, v in paddle_feed(batch).items()}, fixture / "inputs.safetensors")
    save_file({k: v.float().contiguous() for k, v in reference.items()}, fixture / "outputs.safetensors")
    assert verify(conversion, converted, fixture, atol=1e-4, print_fn=lambda _: None)


def test_optimizer_state_is_dropped_and_unknown_names_refused(tmp_path):
    torch.manual_seed(0)
    model = ErnieVilForMultipleChoice(tiny_config())
    folder = release_folder(tmp_path, model)
    write_paddle_params(
        folder / "params",
        {
            "word_embedding_moment1_0": np.zeros((60, 16), np.float32),
            "word_embedding_beta1_pow_acc_0": np.ones(1, np.float32),
            "learning_rate_0": np.ones(1, np.float32),
        },
    )
    converted = conversion.convert(folder)
    torch.testing.assert_close(converted.pair_scorer.weight, model.pair_scorer.weight)
    write_paddle_params(folder / "params", {"img_attr_fc.w_0": np.zeros((24, 3), np.float32)})
    with pytest.raises(ConversionError, match="img_attr_fc"):
        conversion.convert(folder)
    with pytest.warns(UserWarning, match="img_attr_fc"):
        conversion.convert(folder, ignore_unknown=True)


def test_two_vcr_heads_need_a_task_prefix(tmp_path):
    torch.manual_seed(0)
    model = ErnieVilForMultipleChoice(tiny_config())
    folder = release_folder(tmp_path, model, task_prefix="vcr_qa")
    write_paddle_params(
        folder / "params", {"vcr_qar_fc.w_0": np.zeros((8, 1), np.float32), "vcr_qar_fc.b_0": np.ones(1, np.float32)}
    )
    with pytest.raises(ConversionError, match="task_prefix"):
        conversion.convert(folder)
    qar = conversion.convert(folder, task_prefix="vcr_qar")
    assert qar.pair_scorer.bias.item() == 1.0
    qa = conversion.convert(folder, task_prefix="vcr_qa")
    torch.testing.assert_close(qa.pair_scorer.weight, model.pair_scorer.weight)


def test_config_consistency_is_checked(tmp_path):
    torch.manual_seed(0)
    model = ErnieVilModel(tiny_config())
    folder = release_folder(tmp_path, model)
    bad = {**original_json(model.config), "num_hidden_layers": 7}
    with pytest.raises(ConversionError, match="num_hidden_layers"):
        conversion.convert(folder, config=bad)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        tiny_config(num_hidden_layers=5)
    assert ErnieVilConfig().layer_norm_eps == 1e-5 and ErnieVilConfig().num_hidden_layers == 12
    large = ErnieVilConfig.large()
    assert (large.num_hidden_layers, large.hidden_size, large.v_num_hidden_layers) == (24, 1024, 6)


# ------------------------------------------------------------------------------------------------------------------
# scene graphs and pretraining
# ------------------------------------------------------------------------------------------------------------------


def _spans(caption, graph):
    text = lambda span: caption[span[0] : span[1]]  # noqa: E731
    objects = [text(o) for o in graph.objects]
    return (
        objects,
        sorted((text(a), objects[i]) for a, i in graph.attributes),
        [(objects[s], text(r), objects[o]) for s, r, o in graph.relations],
    )


def test_rule_based_scene_graph_parser():
    caption = "A small red circle to the left of two blue squares."
    objects, attributes, relations = _spans(caption, parse_scene_graph(caption))
    assert objects == ["circle", "squares"]
    assert attributes == [("blue", "squares"), ("red", "circle"), ("small", "circle"), ("two", "squares")]
    assert relations == [("circle", "to the left of", "squares")]
    caption = "a man riding a brown horse on the beach and the tennis racket is yellow"
    objects, attributes, relations = _spans(caption, parse_scene_graph(caption))
    assert objects == ["man", "horse", "beach", "tennis racket"]
    assert attributes == [("brown", "horse"), ("yellow", "tennis racket")]
    assert relations == [("man", "riding", "horse"), ("horse", "on", "beach")]


class _Token:
    """A spaCy-like token for testing the dependency rules without spaCy."""

    def __init__(self, doc, i, text, idx, pos, dep, head):
        self.doc, self.i, self.text, self.idx, self.pos_, self.dep_, self._head = doc, i, text, idx, pos, dep, head

    @property
    def head(self):
        return self.doc[self._head]

    @property
    def children(self):
        return [t for t in self.doc if t._head == self.i and t.i != self.i]

    @property
    def lefts(self):
        return [t for t in self.children if t.i < self.i]


def _fake_parse(caption, rows):
    """rows: (text, pos, dep, head index) per token, as spaCy's en_core_web_sm parses the caption."""
    doc, position = [], 0
    for i, (text, pos, dep, head) in enumerate(rows):
        position = caption.index(text, position)
        doc.append(_Token(doc, i, text, position, pos, dep, head))
        position += len(text)
    return doc


def test_dependency_scene_graph_parser_rules():
    from hf_vlp.modeling.ernie_vil import SpacySceneGraphParser

    caption = "A man riding a brown horse on the beach and a red ball sitting on the grass."
    rows = [
        ("A", "DET", "det", 1),
        ("man", "NOUN", "ROOT", 1),
        ("riding", "VERB", "acl", 1),
        ("a", "DET", "det", 5),
        ("brown", "ADJ", "amod", 5),
        ("horse", "NOUN", "dobj", 2),
        ("on", "ADP", "prep", 2),
        ("the", "DET", "det", 8),
        ("beach", "NOUN", "pobj", 6),
        ("and", "CCONJ", "cc", 1),
        ("a", "DET", "det", 12),
        ("red", "ADJ", "amod", 12),
        ("ball", "NOUN", "conj", 1),
        ("sitting", "VERB", "acl", 12),
        ("on", "ADP", "prep", 13),
        ("the", "DET", "det", 16),
        ("grass", "NOUN", "pobj", 14),
        (".", "PUNCT", "punct", 1),
    ]
    parser = SpacySceneGraphParser(lambda text: _fake_parse(text, rows))
    objects, attributes, relations = _spans(caption, parser(caption))
    assert objects == ["man", "horse", "beach", "ball", "grass"]
    assert attributes == [("brown", "horse"), ("red", "ball")]
    assert sorted(relations) == sorted(
        [("man", "on", "beach"), ("ball", "sitting on", "grass"), ("man", "riding", "horse")]
    )


def test_spacy_scene_graph_parser():
    pytest.importorskip("spacy")
    from hf_vlp.modeling.ernie_vil import SpacySceneGraphParser

    try:
        parser = SpacySceneGraphParser("en_core_web_sm")
    except OSError:
        pytest.skip("no spaCy English pipeline installed")
    caption = "A man riding a brown horse on the beach."
    objects, attributes, relations = _spans(caption, parser(caption))
    assert {"man", "horse", "beach"} <= set(objects) and ("brown", "horse") in attributes
    assert ("man", "riding", "horse") in relations


def test_scene_graph_targets_label_the_parsed_words(bert_tokenizer):
    builder = SceneGraphTargetBuilder(
        bert_tokenizer, object_probability=1.0, attribute_probability=1.0, relation_probability=1.0
    )
    captions = ["a small red circle to the left of two blue squares", "a green cross"]
    out = builder(captions, itm_labels=torch.tensor([1, 1]))
    original = bert_tokenizer(captions, padding=True, return_tensors="pt")["input_ids"]
    words = lambda labels, row: bert_tokenizer.decode(original[row][labels[row] != -100])  # noqa: E731
    assert words(out["object_labels"], 0) == "circle squares"
    assert words(out["attribute_labels"], 0) == "small red two blue"
    assert words(out["relation_labels"], 0) == "to the left of"
    assert words(out["object_labels"], 1) == "cross" and words(out["attribute_labels"], 1) == "green"
    predicted = (out["object_labels"] != -100) | (out["attribute_labels"] != -100) | (out["relation_labels"] != -100)
    assert (out["input_ids"][~predicted] == original[~predicted]).all()
    assert (out["input_ids"][predicted] != original[predicted]).float().mean() > 0.5  # mostly [MASK]
    # mismatched pairs (itm_labels == 0) get no targets
    mismatched = builder(captions, itm_labels=torch.tensor([0, 1]))
    assert (mismatched["object_labels"][0] == -100).all()


def test_each_pretraining_loss_falls_including_scene_graph_prediction(bert_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(bert_tokenizer), max_position_embeddings=32, co_hidden_size=16)
    model = ErnieVilForPreTraining(config).train()
    captions = ["a small red circle to the left of two blue squares", "a man riding a brown horse on the beach"]
    builder = SceneGraphTargetBuilder(
        bert_tokenizer,
        object_probability=0.6,
        attribute_probability=0.6,
        relation_probability=1.0,
        mlm_probability=0.3,
        seed=3,
    )
    text = builder(captions)
    for name in ("object_labels", "attribute_labels", "relation_labels", "labels"):
        assert (text[name] != -100).any(), name
    regions = tiny_batch(batch=2, regions=4)
    region_mask = torch.zeros(2, 4, dtype=torch.bool)
    region_mask[:, 1] = True
    inputs = {**{k: v for k, v in regions.items() if k.startswith("visual_")}, **text}
    labels = dict(
        region_mask=region_mask,
        region_soft_labels=torch.softmax(3 * torch.randn(2, 4, 7), -1),
        itm_labels=torch.tensor([1, 0]),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # a 30522-word softmax on a 16-wide model
    names = ("mlm_loss", "object_loss", "attribute_loss", "relation_loss", "mrc_loss", "itm_loss")
    first = None
    for _ in range(25):
        out = model(**inputs, **labels)
        losses = {k: out[k].item() for k in names}
        first = first or losses
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    for name in names:
        assert losses[name] < 0.7 * first[name], (name, first[name], losses[name])


# ------------------------------------------------------------------------------------------------------------------
# heads, attention backends, Auto classes
# ------------------------------------------------------------------------------------------------------------------


def test_heads_return_loss_and_logits():
    torch.manual_seed(0)
    config = tiny_config()
    batch = tiny_batch()
    vqa = ErnieVilForVisualQuestionAnswering(config)(**batch, labels=torch.rand(3, 5))
    assert vqa.logits.shape == (3, 5) and torch.isfinite(vqa.loss)
    retrieval = ErnieVilForImageTextRetrieval(config)(**batch, labels=torch.tensor([1, 0, 1]))
    assert retrieval.logits.shape == (3,) and torch.isfinite(retrieval.loss)
    refexp = ErnieVilForReferringExpression(config)(**batch, labels=torch.tensor([1, 2, 0]))
    assert refexp.logits.shape == (3, 5) and (refexp.logits[2, -2:] == torch.finfo(torch.float32).min).all()
    choices = {
        k: v[:, None].expand(3, 4, -1)
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    choices.update({k: v for k, v in batch.items() if k.startswith("visual_")})
    vcr = ErnieVilForMultipleChoice(config)(**choices, labels=torch.tensor([0, 3, 1]))
    assert vcr.logits.shape == (3, 4) and torch.isfinite(vcr.loss)
    vcr.loss.backward()


def test_retrieval_groups_train_with_the_original_circle_loss():
    from hf_vlp.pretraining.losses import circle_loss

    # circle loss against its definition, term by term in float64
    positive, negative = torch.tensor([[0.9], [0.4]]), torch.tensor([[0.2, 0.5], [0.6, 0.1]])
    m, gamma = 0.3, 32.0
    expected = []
    for p, negatives in zip(positive.double(), negative.double()):
        a_p = max(0.0, 1 + m - float(p[0]))
        sum_p = np.exp(-gamma * a_p * (float(p[0]) - (1 - m)))
        sum_n = sum(np.exp(gamma * max(0.0, float(n) + m) * (float(n) - m)) for n in negatives)
        expected.append(np.log(1 + sum_n * sum_p))
    assert float(circle_loss(positive, negative, m, gamma)) == pytest.approx(np.mean(expected), rel=1e-6)

    # groups of 5: positive, 2 image negatives, 2 caption negatives (the original's split at (G + 1) // 2)
    torch.manual_seed(0)
    model = ErnieVilForImageTextRetrieval(tiny_config())
    batch = tiny_batch(batch=10)
    output = model(**batch, group_size=5)
    scores = output.logits.view(2, 5).sigmoid()
    reference = (
        circle_loss(scores[:, :1], scores[:, 3:], m, gamma) + circle_loss(scores[:, :1], scores[:, 1:3], m, gamma)
    ) / 2
    torch.testing.assert_close(output.loss, reference)
    output.loss.backward()
    assert model.pair_scorer.weight.grad.abs().sum() > 0
    softmax = ErnieVilForImageTextRetrieval(tiny_config(retrieval_loss="softmax"))
    softmax.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        softmax(**batch, group_size=5).loss,
        F.cross_entropy(output.logits.detach().view(2, 5), torch.zeros(2, dtype=torch.long)),
    )
    with pytest.raises(ValueError, match="first row of each group"):
        model(**batch, group_size=5, labels=torch.tensor([1, 0, 0, 0, 0] * 2))
    with pytest.raises(ValueError, match="group_size >= 3"):
        model(**batch, group_size=2)
    with pytest.raises(ValueError, match="`retrieval_loss` must be 'circle' or 'softmax'"):
        tiny_config(retrieval_loss="triplet")


def test_sdpa_equals_eager_and_auto_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ErnieVilForPreTraining(tiny_config()).eval()
    batch = tiny_batch()
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**batch).mlm_logits
        model.set_attn_implementation("eager")
        eager = model(**batch).mlm_logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, ErnieVilForPreTraining)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).mlm_logits, sdpa, atol=1e-5, rtol=1e-5)
    assert isinstance(transformers.AutoModel.from_pretrained(tmp_path), ErnieVilModel)
    assert isinstance(transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path), ErnieVilForMultipleChoice)
    assert isinstance(
        transformers.AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path), ErnieVilForVisualQuestionAnswering
    )
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.bi_hidden_size == config.co_hidden_size == 8  # the ViLBERT modules read ERNIE-ViL's fields


def test_released_parameter_counts():
    with torch.device("meta"):
        base = ErnieVilModel(ErnieVilConfig())
        large = ErnieVilModel(ErnieVilConfig.large())
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    # base has ViLBERT base's encoder shape (12 text / 6 visual / 6 co-attention layers, 768 / 1024 / 1024 wide)
    from hf_vlp.modeling.vilbert import VilbertConfig, VilbertModel

    with torch.device("meta"):
        vilbert = VilbertModel(VilbertConfig())
    assert count(base) == count(vilbert)
    assert (len(large.encoder.layer), len(large.encoder.v_layer), len(large.encoder.c_layer)) == (24, 6, 6)


def test_remote_code_bundle_loads_without_hf_vlp(tmp_path):
    import os
    import subprocess
    import sys

    from hf_vlp.hub import save_for_hub

    torch.manual_seed(0)
    model = ErnieVilForMultipleChoice(tiny_config()).eval()
    save_for_hub(model, None, tmp_path / "repo")
    batch = tiny_batch()
    choices = {
        k: v[:, None].expand(3, 2, -1).contiguous()
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    choices.update({k: v for k, v in batch.items() if k.startswith("visual_")})
    torch.save(choices, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**choices).logits, tmp_path / "logits.pt")
    script = f"""
import sys
class BlockHfVlp:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_vlp" or name.startswith("hf_vlp."):
            raise ImportError("hf_vlp is not installed here")
sys.meta_path.insert(0, BlockHfVlp())
import torch
from transformers import AutoModelForMultipleChoice
model = AutoModelForMultipleChoice.from_pretrained(r"{tmp_path / "repo"}", trust_remote_code=True).eval()
assert "hf_vlp" not in type(model).__module__
with torch.no_grad():
    logits = model(**torch.load(r"{tmp_path / "inputs.pt"}")).logits
print("max_abs_diff", (logits - torch.load(r"{tmp_path / "logits.pt"}")).abs().max().item())
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_abs_diff 0.0" in result.stdout


def test_pretraining_collator_feeds_every_objective(bert_tokenizer):
    from hf_vlp.modeling.ernie_vil import DataCollatorForErnieVilPretraining, ErnieVilProcessor
    from hf_vlp.pretraining.collators import DataCollatorForVLPretraining

    rng = np.random.default_rng(0)
    captions = ["a small red circle to the left of two blue squares", "a green cross above a yellow diamond"] * 2
    rows = [
        {
            "text": caption,
            "region_features": rng.random((3, FEATURES)).astype(np.float32),
            "boxes": [[0, 0, 10, 10], [5, 5, 20, 20], [2, 8, 30, 12]],
            "image_width": 32,
            "image_height": 32,
            "region_labels": [1, 2, 3],
            "region_class_probs": rng.dirichlet(np.ones(7), size=3).astype(np.float32),
        }
        for caption in captions
    ]
    processor = ErnieVilProcessor(tokenizer=bert_tokenizer)
    region = DataCollatorForVLPretraining(processor, objectives=("mrc_kl", "itm"), itm_negative_probability=0.25)
    targets = SceneGraphTargetBuilder(
        bert_tokenizer, object_probability=1.0, attribute_probability=0.5, relation_probability=1.0
    )
    batch = DataCollatorForErnieVilPretraining(region, targets)(rows)
    assert batch["visual_feats"].shape == (4, 4, FEATURES)  # whole-image region added
    matched = batch["itm_labels"] == 1
    assert (batch["object_labels"][matched] != -100).any() and (batch["object_labels"][~matched] == -100).all()
    model = ErnieVilForPreTraining(tiny_config(vocab_size=len(bert_tokenizer), max_position_embeddings=32))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.object_loss is not None and out.itm_loss is not None
