"""Prompt encoding shared by the runtime pipelines: the export's tokenizer, diffusers' truncation
warning, its negative-prompt rules and its prompt / prompt_embeds checks.

Two prompt conventions stand in diffusers' video pipelines:
- T5 (CogVideoX, LTX, Mochi): a missing negative prompt is "", a str one is repeated per prompt
  (``t5_negative_prompts``); LTX and Mochi keep the tokenizer's attention mask
  (``T5PromptMixin._encode_with_mask``).
- CLIP / Stable Diffusion (text-to-video, I2VGen-XL): ``sd_uncond_tokens``.
"""
from __future__ import annotations

import logging

import numpy as np

from .manifest import ExportInvalid

F32 = np.float32


def load_tokenizer(pipe, class_name: str, no_tokenizer: str):
    """The tokenizer the export copied from its snapshot (manifest "tokenizer"), loaded with
    transformers' ``class_name``; ``no_tokenizer`` is the ValueError's text when there is none."""
    info = pipe.manifest.get("tokenizer")
    if not info:
        raise ValueError(f"{pipe.export.root}: {no_tokenizer}")
    folder = pipe.export.root / info["folder"]
    if not folder.is_dir():
        raise ExportInvalid(f"{pipe.export.root}: the tokenizer folder {info['folder']!r} is missing; re-export")
    import transformers

    return getattr(transformers, class_name).from_pretrained(str(folder))


def warn_truncated(tokenizer, texts, ids, max_length: int, limit: str, log: logging.Logger):
    """diffusers' warning, on the pipeline module's logger ``log``, when tokenizing to ``max_length``
    cut text off; ``limit`` completes "because ..." (e.g. "CLIP can only handle sequences up to")."""
    untruncated = tokenizer(texts, padding="longest", return_tensors="np")["input_ids"]
    if untruncated.shape[-1] >= ids.shape[-1] and not np.array_equal(ids, untruncated):
        removed = tokenizer.batch_decode(untruncated[:, max_length - 1:-1])
        log.warning(f"The following part of your input was truncated because {limit} {max_length} tokens: "
                    f"{removed}")


def prompt_batch_size(prompt, prompt_embeds) -> int:
    """diffusers' batch size: 1 for a str prompt, the list's length, else prompt_embeds' first axis."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return np.shape(prompt_embeds)[0]


def t5_negative_prompts(prompt, negative_prompt, batch_size: int) -> list:
    """The T5 pipelines' negative prompts: None is "", a str is repeated batch_size times; a list must
    match ``prompt``'s type and length."""
    negative_prompt = negative_prompt or ""
    negative_prompt = batch_size * [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got "
                        f"{type(negative_prompt)} != {type(prompt)}.")
    if batch_size != len(negative_prompt):
        raise ValueError(f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but "
                         f"`prompt`: {prompt} has batch size {batch_size}. Please make sure that passed "
                         "`negative_prompt` matches the batch size of `prompt`.")
    return negative_prompt


def sd_uncond_tokens(prompt, negative_prompt, batch_size: int) -> list:
    """The Stable Diffusion pipelines' negative prompts (uncond_tokens): None is "" per prompt, a str is
    one negative prompt; a list must match ``prompt``'s type and length."""
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                        f" {type(prompt)}.")
    if isinstance(negative_prompt, str):
        return [negative_prompt]
    if batch_size != len(negative_prompt):
        raise ValueError(f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but `prompt`:"
                         f" {prompt} has batch size {batch_size}. Please make sure that passed `negative_prompt` "
                         "matches the batch size of `prompt`.")
    return list(negative_prompt)


def check_prompt_or_embeds(prompt, prompt_embeds):
    """diffusers' check_inputs: exactly one of ``prompt`` (a str or a list) and ``prompt_embeds``."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one "
                         "of the two.")
    if prompt is None and prompt_embeds is None:
        raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and "
                         "`prompt_embeds` undefined.")
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")


def check_embeds_with_masks(prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                            negative_prompt_attention_mask):
    """diffusers' check_inputs for pipelines whose embeddings go with a mask (LTX, Mochi)."""
    if prompt_embeds is not None and prompt_attention_mask is None:
        raise ValueError("Must provide `prompt_attention_mask` when specifying `prompt_embeds`.")
    if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
        raise ValueError("Must provide `negative_prompt_attention_mask` when specifying `negative_prompt_embeds`.")
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
            raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed "
                             f"directly, but got: `prompt_embeds` {np.shape(prompt_embeds)} != "
                             f"`negative_prompt_embeds` {np.shape(negative_prompt_embeds)}.")
        if np.shape(prompt_attention_mask) != np.shape(negative_prompt_attention_mask):
            raise ValueError("`prompt_attention_mask` and `negative_prompt_attention_mask` must have the same "
                             f"shape when passed directly, but got: `prompt_attention_mask` "
                             f"{np.shape(prompt_attention_mask)} != `negative_prompt_attention_mask` "
                             f"{np.shape(negative_prompt_attention_mask)}.")


class T5PromptMixin:
    """The T5 prompt path of CogVideoX, LTX and Mochi, for an ExportedPipeline whose export has a
    ``text_encoder`` graph (ids [B, L] -> [B, L, D]) and a T5 tokenizer folder.

    A family sets ``tokenizer_hint`` (what to pass instead of a prompt when the export has no
    tokenizer); the masked families (LTX, Mochi) set ``size_multiple`` and ``callback_tensor_inputs``
    for ``check_inputs``; Mochi sets ``force_zeros_for_empty_prompt`` and ``t5_graph_takes_mask``."""

    _tokenizer = None
    tokenizer_hint = "pass prompt_embeds= and prompt_attention_mask="
    size_multiple = 8  # height and width must be multiples of this
    callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")
    force_zeros_for_empty_prompt = False
    t5_graph_takes_mask = False  # the text encoder graph takes (input_ids, attention_mask)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self, "T5TokenizerFast", "this export has no tokenizer (exported with "
                                             "random weights or from a snapshot without tokenizer/); "
                                             + self.tokenizer_hint)
        return self._tokenizer

    def check_inputs(self, prompt, height, width, callback_on_step_end_tensor_inputs, prompt_embeds,
                     negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask):
        """diffusers' check_inputs of LTX and Mochi, plus the export's static height and width."""
        k = self.size_multiple
        if height % k != 0 or width % k != 0:
            raise ValueError(f"`height` and `width` have to be divisible by {k} but are {height} and {width}.")
        self.check_shapes(height=height, width=width)
        if callback_on_step_end_tensor_inputs is not None:
            self.check_callback_inputs(callback_on_step_end_tensor_inputs, self.callback_tensor_inputs)
        check_prompt_or_embeds(prompt, prompt_embeds)
        check_embeds_with_masks(prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                                negative_prompt_attention_mask)

    def _t5_ids(self, prompt, max_sequence_length):
        """(ids int32 [B, L], mask bool [B, L]) padded to max_sequence_length; with
        force_zeros_for_empty_prompt and a last prompt "", all zeros (genmo's empty prompt: diffusers
        tests the last prompt of the list and zeroes every row)."""
        text_inputs = self.tokenizer(prompt, padding="max_length", max_length=max_sequence_length, truncation=True,
                                     add_special_tokens=True, return_tensors="np")
        ids = np.asarray(text_inputs["input_ids"], np.int32)
        mask = np.asarray(text_inputs["attention_mask"]).astype(bool)
        if self.force_zeros_for_empty_prompt and prompt[-1] == "":
            ids = np.zeros_like(ids)
            mask = np.zeros_like(mask)
        # on the family module's logger (video_aot.runtime.ltx, ...), where it was logged before
        warn_truncated(self.tokenizer, prompt, ids, max_sequence_length, "`max_sequence_length` is set to ",
                       logging.getLogger(type(self).__module__))
        return ids, mask

    def _get_t5_prompt_embeds(self, prompt, num_videos_per_prompt, max_sequence_length):
        """(embeds float32 [B * n, L, D], mask bool [B * n, L]); each prompt encoded n times in a row,
        which is diffusers' repeat after one encoding (T5 rows are independent) and fills the static
        batch."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        ids, mask = self._t5_ids(prompt, max_sequence_length)
        ids = np.repeat(ids, num_videos_per_prompt, axis=0)
        mask = np.repeat(mask, num_videos_per_prompt, axis=0)
        self.check_shapes(batch=ids.shape[0])
        with self.timed("text_encode"):
            if self.t5_graph_takes_mask:
                embeds = self.graphs["text_encoder"](input_ids=ids, attention_mask=mask.astype(np.int32))[0]
            else:
                embeds = self.graphs["text_encoder"](ids)[0]
        return embeds.astype(F32), mask

    def _encode_with_mask(self, prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt,
                          prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                          negative_prompt_attention_mask, max_sequence_length):
        """diffusers' encode_prompt of LTX and Mochi: (prompt_embeds, prompt_attention_mask,
        negative_prompt_embeds, negative_prompt_attention_mask); masks are bool arrays."""
        prompt = [prompt] if isinstance(prompt, str) else prompt
        batch_size = len(prompt) if prompt is not None else np.shape(prompt_embeds)[0]
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self._get_t5_prompt_embeds(prompt, num_videos_per_prompt,
                                                                              max_sequence_length)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = t5_negative_prompts(prompt, negative_prompt, batch_size)
            negative_prompt_embeds, negative_prompt_attention_mask = self._get_t5_prompt_embeds(
                negative_prompt, num_videos_per_prompt, max_sequence_length)
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask
