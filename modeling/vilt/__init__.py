"""ViLT: transformers' backbone and fine-tuning heads, plus the pretraining objectives (MLM + ITM + word-patch
alignment, untied MLM decoder) and a trainable retrieval head.

This file is the architecture's spec (`SPECS`, read by `import hf_vlp`) and its public names, imported from the
submodules on first access so that reading the spec imports no modeling code. VQA and NLVR2 are transformers' own
classes (which its Auto classes already return); the pretraining head fills transformers' missing
AutoModelForPreTraining entry for vilt.
"""

from hf_vlp.spec import ArchitectureSpec, Head, InputKind, Task, lazy_exports

SPECS = (
    ArchitectureSpec(
        name="vilt",
        model_type="vilt",
        package=__name__,
        config="transformers.ViltConfig",
        heads={
            Task.PRETRAINING: Head(
                ".modeling_vilt.ViltForPreTraining",
                auto_classes=("AutoModelForPreTraining",),
                pipeline_tag="feature-extraction",
            ),
            Task.VQA: Head(
                "transformers.ViltForQuestionAnswering",
                pipeline_tag="visual-question-answering",
                num_labels_field="num_labels",
            ),
            # two images per statement, the second with its own modality type (token types text 0, image 1, image 2)
            Task.NLVR2: Head(
                "transformers.ViltForImagesAndTextClassification",
                config_overrides={"num_images": 2, "num_labels": 2, "modality_type_vocab_size": 3},
                num_labels_field="num_labels",
            ),
            Task.RETRIEVAL: Head(".modeling_vilt.ViltForImageTextRetrieval"),
        },
        inputs=InputKind.PIXELS,
        processor="transformers.ViltProcessor",
        small_sizes=dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=256,
            image_size=64,
            patch_size=16,
            max_position_embeddings=40,
            # width-matched init (~1/sqrt(128)), as hf_vlp.recipes.SMALL_SIZES: BERT's 0.02 leaves a 128-wide model's
            # attention logits ~0 and the patch projection tiny, so training sits on the question-only prior
            initializer_range=0.08,
        ),
        lora_target_modules=r"(.*\.)?(query|key|value|patch_embeddings\.projection)",
        example_inputs=".inputs_vilt.example_inputs",
        bench_task=Task.VQA,
    ),
)

_EXPORTS = {
    ".modeling_vilt": (
        "LORA_TARGET_MODULES",
        "ViltForImageTextRetrieval",
        "ViltForPreTraining",
        "ViltForPreTrainingOutput",
        "ViltITMHead",
        "word_patch_alignment",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["SPECS", *sorted(name for names in _EXPORTS.values() for name in names)]
