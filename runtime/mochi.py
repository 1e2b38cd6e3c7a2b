"""MochiPipeline (Mochi-1 text-to-video) over exported graphs. The call mirrors diffusers'
``MochiPipeline.__call__`` argument for argument; the loop is written flat with its numbered phases.

What is diffusers' behaviour, kept here:
- T5 runs with the tokenizer's attention mask, and the mask goes on to the transformer (padded text
  tokens are masked out there). With ``force_zeros_for_empty_prompt`` (model_index.json, or the
  export option), a prompt list whose last entry is "" is encoded from zero token ids and an all-zero
  mask (genmo's original treatment of the empty negative prompt).
- Sigmas: the linear-quadratic schedule (threshold noise 0.025) passed to FlowMatchEuler as
  ``sigmas=``; with the checkpoint's ``invert_sigmas`` the transformer sees t = (1 - sigma) * 1000.
  diffusers always passes those sigmas, so its ``timesteps=`` argument can never be used (it raises
  "Only one of `timesteps` or `sigmas`"); the same error is raised here.
- Latents, CFG and the scheduler step are float32; the CFG pair (negative first) runs in the step
  graph as one batch of 2B. Without CFG the graph still takes 2B: the prompt fills both halves and
  the guidance scale is 1.
- Before decoding, latents * latents_std / scaling_factor + latents_mean (inside the decoder graph).

Static shapes: height, width, num_frames (through its latent frame count), the batch (prompts x
num_videos_per_prompt) and max_sequence_length are fixed at export time. Each of them left at None
takes the exported value (the mochi-1 preset exports diffusers' defaults: 480x848, 19 frames, 256
tokens); another value is refused, naming the exported shapes.

Randomness: one numpy generator (``seed=`` or ``generator=``) supplies the initial latents.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import OUTPUT_TYPES, postprocess_video
from .manifest import ShapeMismatch
from .schedulers import FLOW_MATCH_CLASS_NAMES, linear_quadratic_schedule, make_scheduler
from .text import T5PromptMixin, prompt_batch_size


F32 = np.float32
THRESHOLD_NOISE = 0.025  # MochiPipeline: genmo's infer.py threshold for the linear-quadratic schedule


class MochiPipeline(T5PromptMixin, ExportedPipeline):
    scheduler_names = tuple(sorted(FLOW_MATCH_CLASS_NAMES))  # the step graph predicts a flow velocity
    family = "mochi"
    tokenizer_hint = "pass prompt_embeds= and prompt_attention_mask= (and the negative ones)"
    t5_graph_takes_mask = True  # T5 runs with the tokenizer's mask
    graph_names = ("text_encoder", "transformer", "vae_decoder")
    image_inputs = ()
    # diffusers' linear-quadratic schedule needs at least 2 steps (1 step divides by zero there)
    request_limits = {"num_inference_steps": (2, 500)}

    def __init__(self, export, backend):
        super().__init__(export, backend)
        # diffusers' pipeline config entry (register_to_config); a caller may flip it as in diffusers
        self.force_zeros_for_empty_prompt = bool(self.manifest.get("force_zeros_for_empty_prompt", False))

    # ------------------------------------------------------------------ requests over a service
    def example_request(self) -> dict:
        return {**super().example_request(), "num_inference_steps": 2}

    def check_request(self, kwargs: dict):
        if "num_frames" in kwargs:
            self.check_frames(kwargs["num_frames"])

    # ------------------------------------------------------------------ checks
    def check_frames(self, num_frames):
        m = self.manifest
        self.check_latent_frames(num_frames, m["latent_frames"], m["vae_scale_factor_temporal"])

    # ------------------------------------------------------------------ prompt
    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance=True, num_videos_per_prompt=1,
                      prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                      negative_prompt_attention_mask=None, max_sequence_length=256):
        """diffusers' encode_prompt: (prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
        negative_prompt_attention_mask); masks are bool arrays."""
        return self._encode_with_mask(prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt,
                                      prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                                      negative_prompt_attention_mask, max_sequence_length)

    def _given_embeds(self, embeds, mask, name, batch, max_sequence_length):
        """User-given embeddings and mask, checked against the graphs' static shapes."""
        if embeds is None:
            return None, None
        shape = (batch, max_sequence_length, self.manifest["text_encoder"]["hidden_size"])
        embeds = np.asarray(embeds, F32)
        mask = np.asarray(mask)
        if embeds.shape != shape or mask.shape != shape[:2]:
            raise ShapeMismatch(f"{name} {embeds.shape} with mask {mask.shape}: this export takes {shape} and "
                                f"{shape[:2]} (batch x max_sequence_length x T5 width); exported shapes: "
                                f"{self.export.describe_shapes()}")
        return embeds, mask.astype(bool)

    # ------------------------------------------------------------------ pieces
    def _scheduler(self, name):
        """The export's scheduler, or the one asked for by name; it must take custom sigmas, as
        diffusers' retrieve_timesteps requires of MochiPipeline's scheduler."""
        sched = make_scheduler(self.manifest["scheduler"], name=name)
        if "sigmas" not in inspect.signature(sched.set_timesteps).parameters:
            raise ValueError(f"The current scheduler class {type(sched).__name__}'s `set_timesteps` does not support "
                             "custom sigmas schedules. Please check whether you are using the correct scheduler "
                             f"(MochiPipeline passes its own sigmas; choose one of {sorted(FLOW_MATCH_CLASS_NAMES)}).")
        return sched

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """latents [B, C, F, h, w] as the sampler leaves them -> frames [B, 3, N, H, W] (the graph
        de-normalises with latents_mean / latents_std first)."""
        with self.timed("vae_decode"):
            return self.graphs["vae_decoder"](latents=np.ascontiguousarray(latents, dtype=F32))[0]

    # ------------------------------------------------------------------ call
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int = 64, timesteps: list[int] | np.ndarray | None = None,
                 guidance_scale: float = 4.5, num_videos_per_prompt: int = 1,
                 generator: np.random.Generator | None = None, latents: np.ndarray | None = None,
                 prompt_embeds: np.ndarray | None = None, prompt_attention_mask: np.ndarray | None = None,
                 negative_prompt_embeds: np.ndarray | None = None,
                 negative_prompt_attention_mask: np.ndarray | None = None, output_type: str = "pil",
                 return_dict: bool = True, attention_kwargs: dict[str, Any] | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",),
                 max_sequence_length: int | None = None, seed: int | None = None, scheduler: str | None = None):
        m = self.manifest
        if attention_kwargs:
            raise ValueError(f"attention_kwargs={attention_kwargs!r}: the exported transformer graph has no attention "
                             "processors or LoRA scale to pass them to; fuse LoRA weights before exporting")
        height, width, num_frames, max_sequence_length = self.exported_defaults(
            height=height, width=width, num_frames=num_frames, max_sequence_length=max_sequence_length)

        # 1. check inputs
        self.check_inputs(prompt, height, width, callback_on_step_end_tensor_inputs, prompt_embeds,
                          negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask)
        self.check_frames(num_frames)
        self.check_shapes(max_sequence_length=max_sequence_length)
        self.check_number("num_videos_per_prompt", num_videos_per_prompt, minimum=1, integer=True)
        self.check_number("num_inference_steps", num_inference_steps, integer=True)
        if num_inference_steps < 2:
            raise ValueError(f"num_inference_steps={num_inference_steps}: MochiPipeline's linear-quadratic sigma "
                             "schedule needs at least 2 steps (diffusers divides by zero with 1)")
        self.check_number("guidance_scale", guidance_scale)
        if output_type != "latent" and output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)} or 'latent'")
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0

        # 2. call parameters
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        videos = batch_size * int(num_videos_per_prompt)
        self.check_shapes(batch=videos)
        if prompt is None and num_videos_per_prompt != 1:
            raise ValueError("num_videos_per_prompt > 1 with prompt_embeds: diffusers does not repeat given "
                             "embeddings (its CFG batch would not match the latents); repeat them yourself")

        # 3. text embeddings (masks are bool)
        prompt_embeds, prompt_attention_mask = self._given_embeds(
            prompt_embeds, prompt_attention_mask, "prompt_embeds", videos, max_sequence_length)
        negative_prompt_embeds, negative_prompt_attention_mask = self._given_embeds(
            negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt_embeds", videos,
            max_sequence_length)
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = \
            self.encode_prompt(prompt, negative_prompt, do_cfg, int(num_videos_per_prompt), prompt_embeds,
                               negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask,
                               max_sequence_length)

        # 4. latents: float32 noise [B, C, F, h, w]
        shape = (videos,) + tuple(m["latent_shape"])
        latents = self.initial_latents(shape, latents, rng)
        if do_cfg:
            prompt_embeds = np.concatenate([negative_prompt_embeds, prompt_embeds])
            prompt_attention_mask = np.concatenate([negative_prompt_attention_mask, prompt_attention_mask])

        # 5. timesteps: the linear-quadratic sigmas (diffusers passes them, so timesteps= cannot be used)
        if timesteps is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom "
                             "values (MochiPipeline always passes its linear-quadratic sigmas, so diffusers "
                             "refuses `timesteps` too)")
        sigmas = linear_quadratic_schedule(int(num_inference_steps), THRESHOLD_NOISE)
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(sigmas=sigmas)

        # 6. denoise: the step graph always takes the CFG batch of 2B
        state = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}

        def predict(model_in, t, i):
            embeds = state["prompt_embeds"]
            if do_cfg:
                text, mask, g = embeds, prompt_attention_mask, guidance_scale
            else:
                text = np.concatenate([embeds, embeds])
                mask = np.concatenate([prompt_attention_mask, prompt_attention_mask])
                g = 1.0
            return self.graphs["transformer"](sample=model_in, encoder_hidden_states=text,
                                              encoder_attention_mask=mask.astype(F32),
                                              timestep=np.array([t], F32), guidance_scale=np.array([g], F32))[0]

        on_step = self.step_hook(callback_on_step_end, callback_on_step_end_tensor_inputs, state)
        latents = self.denoise(sched, plan, latents, predict, generator=rng, on_step=on_step)

        # 7. decode
        if output_type == "latent":
            video = latents
        else:
            video = postprocess_video(self.decode_latents(latents), output_type)
        return VideoOutput(frames=video) if return_dict else (video,)


FAMILY = FamilySpec(
    name="mochi",
    pipelines={"MochiPipeline": MochiPipeline},
    aliases={"text2video": "MochiPipeline", "t2v": "MochiPipeline"},
    export="mochi",
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
)
