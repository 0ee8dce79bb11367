"""hf_vlp's transformers pipelines, each on a tiny saved model from an image file: VQA (UNITER through the detector
saved with its processor, ViLT, BLIP), image-text retrieval, visual grounding, captioning; and the setup errors."""

import numpy as np
import pytest
import torch
from conftest import bert_vocab_dir
from test_processors_images import TinyConvDetector, photo
from transformers import pipeline

import hf_vlp  # noqa: F401  (registers the pipelines)
from hf_vlp.processing.images import load_image
from hf_vlp.processing.region import RegionFeatureProcessor

ANSWERS = ["yes", "no", "red", "blue", "two", "dog", "cat"]


def uniter_config(tokenizer, **overrides):
    from hf_vlp.modeling.uniter import UniterConfig

    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_feat_dim=12,
        num_labels=len(ANSWERS),
        id2label=dict(enumerate(ANSWERS)),
        label2id={a: i for i, a in enumerate(ANSWERS)},
    )
    return UniterConfig(**{**sizes, **overrides})


def save_uniter(tmp_path, bert_tokenizer, head="UniterForVisualQuestionAnswering", detector=True, **overrides):
    import hf_vlp.modeling.uniter as uniter

    torch.manual_seed(0)
    model = getattr(uniter, head)(uniter_config(bert_tokenizer, **overrides)).eval()
    folder = tmp_path / head
    model.save_pretrained(folder)
    processor = uniter.UniterProcessor(RegionFeatureProcessor(), bert_tokenizer)
    if detector:
        processor.detector = TinyConvDetector(feature_dim=model.config.visual_feat_dim, seed=1)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "photo.jpg"
    photo(3, size=(40, 30)).save(path, quality=95)
    return path


# ------------------------------------------------------------------------------------------------------------------
# visual question answering
# ------------------------------------------------------------------------------------------------------------------


def test_uniter_vqa_from_a_photo_with_the_detector_saved_in_its_processor(tmp_path, bert_tokenizer, photo_file):
    folder, model, processor = save_uniter(tmp_path, bert_tokenizer)
    vqa = pipeline("visual-question-answering", model=str(folder), device="cpu")
    answers = vqa(str(photo_file), "what colour is it?", top_k=3)
    # the same answer the model gives on the detector's regions of the decoded file
    inputs = processor(text=["what colour is it?"], images=[load_image(photo_file)])
    with torch.no_grad():
        scores = model(**inputs).logits[0].sigmoid()
    best = scores.topk(3)
    assert [a["answer"] for a in answers] == [ANSWERS[i] for i in best.indices.tolist()]
    np.testing.assert_allclose([a["score"] for a in answers], best.values.tolist(), rtol=1e-5)
    # a list of images gives one ranking per image; the "vqa" alias is the same task
    many = pipeline("vqa", model=str(folder), device="cpu")([photo_file, photo(4)], "what colour is it?", top_k=2)
    assert len(many) == 2 and many[0] == answers[:2]


def test_region_vqa_without_a_detector_or_with_another_feature_size_is_refused(tmp_path, bert_tokenizer):
    folder, _, _ = save_uniter(tmp_path, bert_tokenizer, detector=False)
    with pytest.raises(ValueError, match="reads detector region features"):
        pipeline("visual-question-answering", model=str(folder), device="cpu")
    with pytest.raises(ValueError, match=r"8-d region features but the model expects 12-d"):
        pipeline("visual-question-answering", model=str(folder), device="cpu", detector=TinyConvDetector(feature_dim=8))
    vqa = pipeline("visual-question-answering", model=str(folder), device="cpu", detector=TinyConvDetector())
    assert len(vqa(photo(1), "is it a dog?", top_k=2)) == 2


def _tiny_bert_tokenizer():
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "what", "colour", "is", "it", "?", "a", "red", "circle"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=8)


def test_vilt_vqa_from_a_photo(tmp_path, photo_file):
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    torch.manual_seed(0)
    config = ViltConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=8, image_size=32, patch_size=16, num_labels=len(ANSWERS),
        id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)},
    )  # fmt: skip
    model = ViltForQuestionAnswering(config).eval()
    processor = ViltProcessor(
        image_processor=ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=16),
        tokenizer=_tiny_bert_tokenizer(),
    )
    model.save_pretrained(tmp_path / "vilt")
    processor.save_pretrained(tmp_path / "vilt")
    answers = pipeline("visual-question-answering", model=str(tmp_path / "vilt"), device="cpu")(
        photo_file, "what colour is it?", top_k=4
    )
    inputs = processor(images=load_image(photo_file), text="what colour is it?", padding=True, return_tensors="pt")
    with torch.no_grad():
        best = model(**inputs).logits[0].sigmoid().topk(4)
    assert [a["answer"] for a in answers] == [ANSWERS[i] for i in best.indices.tolist()]
    np.testing.assert_allclose([a["score"] for a in answers], best.values.tolist(), rtol=1e-5)


def blip_tiny(tmp_path, head):
    from hf_vlp.modeling import blip

    processor = blip.build_blip_processor(bert_vocab_dir(), image_size=32)
    config = blip.blip_config(
        image_size=32,
        embed_dim=16,
        vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        text=dict(
            vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32, bos_token_id=processor.tokenizer.bos_token_id,
            sep_token_id=processor.tokenizer.sep_token_id, eos_token_id=processor.tokenizer.sep_token_id,
            pad_token_id=processor.tokenizer.pad_token_id,
        ),
        enc_token_id=processor.tokenizer.convert_tokens_to_ids("[ENC]"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = getattr(blip, head)(config).eval()
    model.save_pretrained(tmp_path / head)
    processor.save_pretrained(tmp_path / head)
    return tmp_path / head, model, processor


def test_blip_vqa_ranks_candidate_answers_and_generates_without_them(tmp_path, photo_file):
    folder, model, processor = blip_tiny(tmp_path, "BlipForQuestionAnswering")
    vqa = pipeline("visual-question-answering", model=str(folder), device="cpu")
    ranked = vqa(photo_file, "what colour is it?", candidate_answers=["red", "blue", "a dog"], top_k=3)
    assert sorted(a["answer"] for a in ranked) == ["a dog", "blue", "red"]
    scores = [a["score"] for a in ranked]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    # the best candidate is the one the model's own ranking picks
    inputs = processor(images=load_image(photo_file), text="what colour is it?", return_tensors="pt")
    candidates = processor.tokenizer(["red", "blue", "a dog"], padding="longest", return_tensors="pt")
    ids = candidates["input_ids"].masked_fill(
        candidates["input_ids"] == processor.tokenizer.sep_token_id, model.config.text_config.eos_token_id
    )
    with torch.no_grad():
        ranking = model.rank_answers(
            inputs["input_ids"],
            inputs["pixel_values"],
            ids,
            candidates["attention_mask"],
            inputs["attention_mask"],
            k=3,
        )
    assert ranked[0]["answer"] == ["red", "blue", "a dog"][int(ranking.answer_index[0])]
    generated = vqa(photo_file, "what colour is it?", top_k=2, max_new_tokens=3)
    assert 1 <= len(generated) <= 2 and all(isinstance(a["answer"], str) for a in generated)


# ------------------------------------------------------------------------------------------------------------------
# retrieval, grounding, captioning
# ------------------------------------------------------------------------------------------------------------------


def test_retrieval_ranks_texts_for_an_image_and_images_for_a_text(tmp_path, bert_tokenizer, photo_file):
    folder, model, processor = save_uniter(tmp_path, bert_tokenizer, head="UniterForImageTextRetrieval")
    retrieve = pipeline("image-text-retrieval", model=str(folder), device="cpu")
    texts = ["a red circle", "two dogs", "a cat on a mat"]
    ranked = retrieve(photo_file, texts=texts)
    image = load_image(photo_file)
    with torch.no_grad():
        direct = model(**processor(text=texts, images=[image] * 3)).logits.reshape(3)
    assert [r["text"] for r in ranked] == [texts[i] for i in direct.argsort(descending=True).tolist()]
    np.testing.assert_allclose(sorted(r["score"] for r in ranked), sorted(direct.tolist()), rtol=1e-5, atol=1e-6)
    pictures = [photo_file, photo(8), photo(9, size=(20, 20))]
    by_text = retrieve("a red circle", images=pictures, top_k=2)
    with torch.no_grad():
        direct = model(**processor(text=["a red circle"] * 3, images=pictures)).logits.reshape(3)
    assert [r["image_index"] for r in by_text] == direct.argsort(descending=True).tolist()[:2]
    with pytest.raises(ValueError, match="texts=.*images="):
        retrieve(photo_file)


def test_grounding_returns_detector_boxes_in_pixels_ranked(tmp_path, bert_tokenizer, photo_file):
    folder, model, processor = save_uniter(tmp_path, bert_tokenizer, head="UniterForReferringExpression")
    ground = pipeline("visual-grounding", model=str(folder), device="cpu")
    boxes = ground(photo_file, "the thing on the left")
    image = load_image(photo_file)
    regions = processor.detector.extract_regions([image])[0]
    assert len(boxes) == len(regions["boxes"]) and abs(sum(b["score"] for b in boxes) - 1) < 1e-5
    with torch.no_grad():
        logits = model(**processor(text=["the thing on the left"], images=[image])).logits[0]
    best = int(logits.argmax())
    expected = regions["boxes"][best].tolist()
    got = boxes[0]["box"]
    np.testing.assert_allclose([got["xmin"], got["ymin"], got["xmax"], got["ymax"]], expected, atol=1e-4)
    assert boxes[0]["index"] == best
    given = ground(photo_file, "the thing on the left", boxes=[[0, 0, 20, 30], [20, 0, 40, 30]], top_k=1)
    assert len(given) == 1 and given[0]["box"]["xmax"] in (20.0, 40.0)


def test_blip_captions_a_photo(tmp_path, photo_file):
    folder, model, processor = blip_tiny(tmp_path, "BlipForConditionalGeneration")
    caption = pipeline("image-to-text", model=str(folder), device="cpu")(photo_file, max_new_tokens=4)
    inputs = processor(images=load_image(photo_file), return_tensors="pt")
    with torch.no_grad():
        expected = processor.tokenizer.batch_decode(
            model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=4), skip_special_tokens=True
        )
    assert caption == [{"generated_text": expected[0].strip()}]


def test_a_model_without_a_head_for_the_task_is_refused(tmp_path, bert_tokenizer):
    folder, _, _ = save_uniter(tmp_path, bert_tokenizer)
    with pytest.raises(ValueError, match="uniter has no head for 'image-to-text'"):
        pipeline("image-to-text", model=str(folder), device="cpu")


def test_oscar_answers_and_captions_with_the_detected_object_tags(tmp_path, bert_tokenizer, photo_file):
    from hf_vlp.modeling.oscar import (
        OscarConfig,
        OscarForConditionalGeneration,
        OscarForVisualQuestionAnswering,
        OscarProcessor,
    )

    config = OscarConfig(
        vocab_size=len(bert_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, visual_feat_dim=12, num_labels=len(ANSWERS),
        id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)},
        pad_token_id=bert_tokenizer.pad_token_id, bos_token_id=bert_tokenizer.cls_token_id,
        eos_token_id=bert_tokenizer.sep_token_id, mask_token_id=bert_tokenizer.mask_token_id,
        caption_max_length=6, caption_tag_position_offset=8,
    )  # fmt: skip
    processor = OscarProcessor(RegionFeatureProcessor(), bert_tokenizer, detector=TinyConvDetector())
    image = load_image(photo_file)
    torch.manual_seed(0)
    for head in (OscarForVisualQuestionAnswering, OscarForConditionalGeneration):
        head(config).eval().save_pretrained(tmp_path / head.__name__)
        processor.save_pretrained(tmp_path / head.__name__)
    vqa = pipeline("visual-question-answering", model=str(tmp_path / "OscarForVisualQuestionAnswering"), device="cpu")
    answers = vqa(photo_file, "what is it?", top_k=2)
    model = vqa.model
    inputs = processor(text=["what is it?"], images=[image])  # tags = the detector's object names
    assert (inputs["token_type_ids"] == 1).any()
    with torch.no_grad():
        best = model(**inputs).logits[0].sigmoid().topk(2)
    assert [a["answer"] for a in answers] == [ANSWERS[i] for i in best.indices.tolist()]
    caption = pipeline("image-to-text", model=str(tmp_path / "OscarForConditionalGeneration"), device="cpu")
    generated = caption(photo_file, max_new_tokens=3)
    with torch.no_grad():
        sequences = caption.model.generate(**processor(images=[image]), max_new_tokens=3)
    assert generated == [{"generated_text": bert_tokenizer.decode(sequences[0], skip_special_tokens=True).strip()}]


def test_cpt_grounds_with_a_masked_lm_head_among_given_or_detected_boxes(tmp_path, bert_tokenizer, photo_file):
    from hf_vlp import cpt
    from hf_vlp.modeling.uniter import UniterForPreTraining, UniterProcessor

    torch.manual_seed(0)
    model = UniterForPreTraining(uniter_config(bert_tokenizer, num_region_classes=5, max_position_embeddings=80))
    model.eval().save_pretrained(tmp_path / "mlm")
    detector = TinyConvDetector()
    UniterProcessor(RegionFeatureProcessor(), bert_tokenizer, detector=detector).save_pretrained(tmp_path / "mlm")
    ground = pipeline("visual-grounding", model=str(tmp_path / "mlm"), device="cpu")
    assert type(ground.model) is UniterForPreTraining
    boxes = [[0, 0, 20, 30], [20, 0, 40, 30], [10, 5, 30, 25]]
    ranked = ground(photo_file, "the red thing", boxes=boxes)
    direct = cpt.ground(
        ground.model, cpt.CptProcessor(bert_tokenizer), load_image(photo_file), np.asarray(boxes, np.float64),
        "the red thing", ground.processor.detector, box_format="xyxy",
    )  # fmt: skip
    assert ranked[0]["index"] == direct.best_index
    np.testing.assert_allclose(
        [r["score"] for r in sorted(ranked, key=lambda r: r["index"])], direct.scores.softmax(-1).tolist(), rtol=1e-5
    )
    assert len(ground(photo_file, "the red thing")) == 5  # the detector's regions as candidates


def test_contrastive_retrieval_ranks_by_clip_similarity(tmp_path, photo_file):
    import gzip

    from transformers import CLIPConfig

    from hf_vlp.modeling.clip import CLIPForPreTraining, build_clip_processor

    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as handle:  # the original file format: a header, then merges
        handle.write("#version: 0.2\n" + "\n".join(["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>"]) + "\n")
    processor = build_clip_processor(bpe, image_size=16, context_length=8)
    vocab = len(processor.tokenizer)
    text = dict(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=0,
    )  # fmt: skip
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    model = CLIPForPreTraining(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    retrieve = pipeline("image-text-retrieval", model=str(tmp_path / "clip"), device="cpu")
    texts = ["the cat", "the dog", "a cat the dog"]
    ranked = retrieve(photo_file, texts=texts)
    with torch.no_grad():
        batch = processor(images=[load_image(photo_file)], text=texts)
        similarity = model(**batch, return_loss=False).logits_per_image[0]
    assert [r["text"] for r in ranked] == [texts[i] for i in similarity.argsort(descending=True).tolist()]
    np.testing.assert_allclose(sorted(r["score"] for r in ranked), sorted(similarity.tolist()), rtol=1e-5)
    by_text = retrieve("the cat", images=[photo_file, photo(1, size=(16, 16))])
    assert sorted(r["image_index"] for r in by_text) == [0, 1]
