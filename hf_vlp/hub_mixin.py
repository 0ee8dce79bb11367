"""`model.push_to_hub(...)` for hf_vlp's model classes: the complete repo that `hf-vlp push` uploads.

transformers' own `push_to_hub` uploads weights and config only; a user of an hf_vlp model also needs the model
card, the processor and the remote code (`docs/design.md`, "Hub"). Every hf_vlp model class puts this mixin before
`PreTrainedModel` in its bases. The module imports nothing from hf_vlp at import time, so the remote-code bundle
of a model carries only this class; on a machine without hf_vlp it falls back to transformers' upload (which
still copies the remote code, as transformers does for every `trust_remote_code` model).
"""

import warnings


class HubPushMixin:
    def push_to_hub(
        self,
        repo_id: str,
        processor=None,
        *,
        private: bool | None = None,
        commit_message: str | None = None,
        timeout: float | None = None,
        base_model: str | None = None,
        datasets=None,
        results=None,
        **transformers_kwargs,
    ):
        """Push this model as a complete hf_vlp repo: safetensors weights, config, processor, a model card naming
        hf_vlp and the architecture, and the remote code of model and processor (`hf_vlp.hub.push_to_hub`).

        `processor` defaults to the one saved next to the weights this model was loaded from (`name_or_path`, when
        it is a local folder with processor files); without one the model is pushed with a warning that
        `AutoProcessor` will fail on the repo, as `hf-vlp push` does. `base_model`, `datasets` and `results` go to
        the card. transformers' upload options (`create_pr`, `revision`, `max_shard_size`, ...) do not apply to
        this route and are refused rather than ignored. Returns the commit URL."""
        try:  # (an import inside `try` is one transformers' remote-code loader does not require)
            from hf_vlp.hub import PROCESSOR_FILES, PUSH_TIMEOUT, push_to_hub
        except ImportError:  # a remote-code copy on a machine without hf_vlp: transformers' upload
            return super().push_to_hub(repo_id, private=private, commit_message=commit_message, **transformers_kwargs)
        if transformers_kwargs:
            raise TypeError(
                f"{type(self).__name__}.push_to_hub pushes the complete hf_vlp repo (hf_vlp.hub.push_to_hub) and "
                f"does not take {sorted(transformers_kwargs)}; it takes repo_id, processor, private, "
                "commit_message, timeout, base_model, datasets and results"
            )
        if processor is None:
            processor = self._processor_saved_with_weights(PROCESSOR_FILES)
        if processor is None:
            warnings.warn(
                f"push_to_hub got no processor and {type(self).__name__} was not loaded from a folder with one: "
                f"{repo_id} gets the model only and AutoProcessor.from_pretrained will fail on it "
                "(pass `processor=`)",
                stacklevel=2,
            )
        card = {key: value for key, value in (("base_model", base_model), ("datasets", datasets)) if value}
        if results is not None:
            card["results"] = results
        return push_to_hub(
            self,
            processor,
            repo_id,
            private=bool(private),
            timeout=PUSH_TIMEOUT if timeout is None else timeout,
            commit_message=commit_message,
            **card,
        )

    def _processor_saved_with_weights(self, processor_files):
        """The processor in the local folder this model was loaded from, or None."""
        from pathlib import Path

        folder = Path(str(getattr(self, "name_or_path", "") or ""))
        if not folder.is_dir() or not any((folder / name).is_file() for name in processor_files):
            return None
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder)
