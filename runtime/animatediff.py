"""AnimateDiffPipeline and AnimateDiffVideoToVideoPipeline over exported graphs (export/animatediff.py).
Each call mirrors the diffusers ``__call__`` argument for argument; the loops are written flat with
diffusers' numbered phases.

Layouts follow diffusers: latents are [B, C, F, h, w] and, unlike the UNet3D pipelines, AnimateDiff
steps the scheduler on that layout directly (so any noise a step draws comes in that order); the
prompt embeddings are repeated per frame, [2B*F, N, D]; the VAE sees frames as [B*F, 3, H, W], in
chunks of the exported decode_chunk_size.

The prompt handling (tokenizer, encode_prompt with clip_skip), the video preprocessing and the VAE
chunks are the UNet3D pipelines' (runtime/t2v.py), which diffusers' AnimateDiff pipelines copy too.
FreeInit (``enable_free_init``) runs in numpy (runtime/free_init.py).
"""
from __future__ import annotations

import logging

import numpy as np

from .base import VideoOutput
from .families import FamilySpec
from .free_init import FreeInitConfig, reinitialize
from .schedulers import add_noise, make_scheduler
from .t2v import VideoToVideoSDPipeline, _UNet3DPipeline

logger = logging.getLogger(__name__)

F32 = np.float32
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")


class _AnimateDiffPipeline(_UNet3DPipeline):
    """What both pipelines share: the motion-frame limit, scheduler overrides, FreeInit, the loop."""

    family = "animatediff"
    graph_names = ("text_encoder", "unet", "vae_decoder", "vae_decoder_tail")

    def __init__(self, export, backend):
        super().__init__(export, backend)
        self._free_init = None

    # ------------------------------------------------------------------ FreeInit (diffusers' FreeInitMixin)
    def enable_free_init(self, num_iters: int = 3, use_fast_sampling: bool = False, method: str = "butterworth",
                         order: int = 4, spatial_stop_frequency: float = 0.25, temporal_stop_frequency: float = 0.25):
        """FreeInit noise re-initialisation: ``num_iters`` denoising passes, each starting from the last
        pass's low frequencies plus fresh high-frequency noise (see runtime/free_init.py)."""
        self._free_init = FreeInitConfig(num_iters, use_fast_sampling, method, order, spatial_stop_frequency,
                                         temporal_stop_frequency)

    def disable_free_init(self):
        self._free_init = None

    @property
    def free_init_enabled(self) -> bool:
        return self._free_init is not None

    def _apply_free_init(self, sched, plan, latents, iteration, num_inference_steps, rng, initial):
        """-> (latents, plan, initial noise): diffusers' ``_apply_free_init``."""
        config = self._free_init
        if iteration == 0:
            initial = latents.copy()
        else:
            latents = reinitialize(sched, plan, latents, initial, config, rng)
        steps = config.steps(num_inference_steps, iteration)
        if steps > 0:
            plan = sched.set_timesteps(steps)
        return latents, plan, initial

    # ------------------------------------------------------------------ checks
    def check_frames(self, num_frames):
        limit = self.manifest["motion_max_seq_length"]
        self.check_number("num_frames", num_frames, minimum=1, integer=True)
        if num_frames > limit:
            raise ValueError(f"num_frames={num_frames} exceeds the motion adapter's motion_max_seq_length={limit}: "
                             f"its positional embeddings cover at most {limit} frames (this export serves "
                             f"num_frames={self.shapes['num_frames']})")
        self.check_shapes(num_frames=num_frames)

    def check_chunk(self, decode_chunk_size):
        if decode_chunk_size is None:
            return
        self.check_number("decode_chunk_size", decode_chunk_size, minimum=1, integer=True)
        self.check_shapes(decode_chunk_size=decode_chunk_size)  # fixed at export (diffusers' default 16 there)

    def make_scheduler(self, scheduler, scheduler_overrides):
        """The snapshot's scheduler config, with ``scheduler`` (a class: "ddim", "euler", "euler_a",
        "dpm++", "lcm") and ``scheduler_overrides`` (config fields, as diffusers'
        ``Scheduler.from_config(config, **overrides)``; e.g. the AnimateDiff seed's DDIM
        ``{"clip_sample": False, "timestep_spacing": "linspace", "beta_schedule": "linear",
        "steps_offset": 1}``)."""
        if scheduler_overrides is not None and not isinstance(scheduler_overrides, dict):
            raise ValueError(f"scheduler_overrides must be a dict of scheduler config fields, got "
                             f"{type(scheduler_overrides).__name__}")
        try:
            return make_scheduler(self.manifest["scheduler"], name=scheduler, **(scheduler_overrides or {}))
        except ValueError as err:
            if scheduler is not None:
                raise
            raise ValueError(f"{err} The export's scheduler_config.json names "
                             f"{self.manifest['scheduler'].get('_class_name')!r}; pass scheduler= one of the supported "
                             "ones, e.g. the AnimateDiff seed's scheduler='ddim' with scheduler_overrides="
                             "{'clip_sample': False, 'timestep_spacing': 'linspace', 'beta_schedule': 'linear', "
                             "'steps_offset': 1}") from None

    def _per_frame_context(self, prompt_embeds, negative_prompt_embeds, do_cfg, guidance_scale, num_frames):
        # [2B, N, D] (unconditional first) -> repeat_interleave over the frames -> [2B*F, N, D]
        context, guidance = self._context(prompt_embeds, negative_prompt_embeds, do_cfg, guidance_scale)
        return np.repeat(context, num_frames, axis=0), guidance

    def _loop(self, sched, plan, start, latents, guidance, rng, eta, callback_on_step_end, tensor_inputs, embeds):
        """Steps ``start .. len(plan) - 1`` on [B, C, F, h, w] latents (diffusers' AnimateDiff loop). The
        per-frame text context is ``embeds["prompt_embeds"]``, which a step callback may replace."""
        def predict(model_in, t, i):
            return self.graphs["unet"](sample=model_in, timestep=np.array([t], F32),
                                       encoder_hidden_states=embeds["prompt_embeds"], guidance_scale=guidance)[0]

        on_step = self.step_hook(callback_on_step_end, tensor_inputs, embeds, offset=start)
        return self.denoise(sched, plan, latents, predict, start=start, generator=rng, eta=eta, on_step=on_step)


class AnimateDiffPipeline(_AnimateDiffPipeline):
    def __call__(
        self,
        prompt: str | list | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list | None = None,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list | None = None,
        decode_chunk_size: int | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        scheduler_overrides: dict | None = None,
    ):
        # 0. defaults come from the export (diffusers takes height/width from the unet config; its
        #    num_frames=16 and decode_chunk_size=16 are the presets' export defaults)
        height, width, num_frames = self.exported_defaults(height=height, width=width, num_frames=num_frames)
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])

        # 1. check inputs
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self.check_common(output_type, None, cross_attention_kwargs, eta)
        self.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        self.check_frames(num_frames)
        self.check_shapes(height=height, width=width)
        self.check_chunk(decode_chunk_size)
        rng = self.make_generator(generator, seed)

        # 2. define call parameters
        do_classifier_free_guidance = guidance_scale > 1

        # 3. encode input prompt; the guidance pair is one batch (unconditional first), per frame
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        batch_size = prompt_embeds.shape[0]
        context, guidance = self._per_frame_context(prompt_embeds, negative_prompt_embeds,
                                                    do_classifier_free_guidance, guidance_scale, num_frames)
        embeds = {"prompt_embeds": context, "negative_prompt_embeds": negative_prompt_embeds}

        # 4. prepare timesteps
        sched = self.make_scheduler(scheduler, scheduler_overrides)
        plan = sched.set_timesteps(num_inference_steps)

        # 5. prepare latent variables
        axes = self.manifest.latent_axes()
        shape = (batch_size, axes["C"], num_frames, axes["H"], axes["W"])
        latents = self.initial_latents(shape, latents, rng)
        latents = (latents * plan.init_noise_sigma).astype(F32)

        # 6. denoising loop, once per FreeInit pass (eta reaches the scheduler's step when it takes one)
        num_free_init_iters = self._free_init.num_iters if self.free_init_enabled else 1
        initial = None
        for free_init_iter in range(num_free_init_iters):
            if self.free_init_enabled:
                latents, plan, initial = self._apply_free_init(sched, plan, latents, free_init_iter,
                                                               num_inference_steps, rng, initial)
            latents = self._loop(sched, plan, 0, latents, guidance, rng, eta, callback_on_step_end,
                                 tensor_inputs, embeds)

        # 7. post-processing
        video = self._decode(latents, output_type)
        return VideoOutput(frames=video) if return_dict else (video,)


class AnimateDiffVideoToVideoPipeline(_AnimateDiffPipeline):
    graph_names = ("text_encoder", "unet", "vae_decoder", "vae_decoder_tail", "vae_encoder", "vae_encoder_tail")
    image_inputs = ("video",)
    # the video input (no resize: the export's size) and the chunked VAE encoder, as VideoToVideoSDPipeline
    preprocess_video = VideoToVideoSDPipeline.preprocess_video
    encode_chunks = VideoToVideoSDPipeline.encode_chunks

    def __call__(
        self,
        video=None,
        prompt: str | list | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        enforce_inference_steps: bool = False,
        timesteps: list | None = None,
        sigmas: list | None = None,
        guidance_scale: float = 7.5,
        strength: float = 0.8,
        negative_prompt: str | list | None = None,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list | None = None,
        decode_chunk_size: int | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        scheduler_overrides: dict | None = None,
    ):
        # 0. defaults come from the export
        height, width = self.exported_defaults(height=height, width=width)
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])

        # 1. check inputs
        self.check_number("strength", strength)
        if strength < 0 or strength > 1:
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if video is not None and latents is not None:
            raise ValueError("Only one of `video` or `latents` should be provided")
        if video is None and latents is None:
            raise ValueError("`video` is required (or `latents=`, the encoded video latents [B, C, F, h, w])")
        if timesteps is not None or sigmas is not None:
            raise ValueError("custom `timesteps` / `sigmas` are not supported by the numpy schedulers; choose the "
                             "schedule with num_inference_steps, scheduler= and scheduler_overrides= (e.g. "
                             "{'timestep_spacing': 'trailing'})")
        self.check_common(output_type, None, cross_attention_kwargs, eta)
        self.check_callback_inputs(tensor_inputs, CALLBACK_TENSOR_INPUTS)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        self.check_shapes(height=height, width=width)
        self.check_chunk(decode_chunk_size)
        rng = self.make_generator(generator, seed)
        do_classifier_free_guidance = guidance_scale > 1
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]

        # 2. prepare timesteps: strength skips the start of the schedule (get_timesteps), or with
        #    enforce_inference_steps a longer schedule keeps its last num_inference_steps steps
        sched = self.make_scheduler(scheduler, scheduler_overrides)
        requested_steps = num_inference_steps  # get_timesteps returns the steps left after strength
        if not enforce_inference_steps:
            plan = sched.set_timesteps(num_inference_steps)
            start, num_inference_steps = self.get_timesteps(plan, num_inference_steps, strength)
        else:
            if strength <= 0:
                raise ValueError("enforce_inference_steps needs strength > 0 (it runs int(num_inference_steps / "
                                 "strength) steps)")
            plan = sched.set_timesteps(int(num_inference_steps / strength))
            start = max(len(plan.timesteps) - num_inference_steps, 0)
        if start >= len(plan.timesteps):
            raise ValueError(f"strength={strength} with num_inference_steps={requested_steps} leaves no "
                             "denoising step; raise strength or the number of steps")
        latent_timestep = np.full((batch_size,), plan.timesteps[start])

        # 3. prepare latent variables: encode the video (latent_dist.sample), scale, noise to the first step
        axes = self.manifest.latent_axes()
        shape = (batch_size, axes["C"], self.shapes["num_frames"], axes["H"], axes["W"])
        if latents is None:
            video = self.preprocess_video(video)  # [B, 3, F, H, W] in [-1, 1]
            bsz, channel, frames, hgt, wid = video.shape
            if bsz != batch_size:
                raise ValueError(f"`video` has batch {bsz} but there are {batch_size} prompts")
            flat = np.ascontiguousarray(video.transpose(0, 2, 1, 3, 4).reshape(bsz * frames, channel, hgt, wid))
            mean, std = self.encode_chunks(flat, self.shapes["decode_chunk_size"])
            sample = rng.standard_normal(mean.shape, dtype=F32)  # latent_dist.sample(generator), frame by frame
            init_latents = F32(self.manifest["vae_scaling_factor"]) * (mean + std * sample)
            init_latents = init_latents.reshape((bsz, frames) + init_latents.shape[1:])  # [B, F, C, h, w]
            noise = rng.standard_normal(init_latents.shape, dtype=F32)  # drawn in diffusers' [B, F, C, h, w]
            latents = add_noise(plan, init_latents, noise, timestep=latent_timestep).astype(F32)
            latents = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4))  # [B, C, F, h, w]
        else:
            latents = self.check_latents(latents, shape)
            if enforce_inference_steps:
                noise = rng.standard_normal(shape, dtype=F32)
                latents = add_noise(plan, latents, noise, timestep=latent_timestep).astype(F32)
        num_frames = latents.shape[2]
        self.check_frames(num_frames)

        # 4. encode input prompt; the guidance pair is one batch (unconditional first), per frame
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        context, guidance = self._per_frame_context(prompt_embeds, negative_prompt_embeds,
                                                    do_classifier_free_guidance, guidance_scale, num_frames)
        embeds = {"prompt_embeds": context, "negative_prompt_embeds": negative_prompt_embeds}

        # 5. denoising loop, once per FreeInit pass (each pass re-applies strength, as diffusers does)
        num_free_init_iters = self._free_init.num_iters if self.free_init_enabled else 1
        initial = None
        for free_init_iter in range(num_free_init_iters):
            if self.free_init_enabled:
                latents, plan, initial = self._apply_free_init(sched, plan, latents, free_init_iter,
                                                               num_inference_steps, rng, initial)
                num_inference_steps = len(plan.timesteps)
                start, num_inference_steps = self.get_timesteps(plan, num_inference_steps, strength)
            latents = self._loop(sched, plan, start, latents, guidance, rng, eta, callback_on_step_end,
                                 tensor_inputs, embeds)

        # 6. post-processing
        out = self._decode(latents, output_type)
        return VideoOutput(frames=out) if return_dict else (out,)

    @staticmethod
    def get_timesteps(plan, num_inference_steps, strength):
        """diffusers' ``get_timesteps``: (the plan index to start at, the number of steps left)."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        return t_start, num_inference_steps - t_start


FAMILY = FamilySpec(
    name="animatediff",
    pipelines={"AnimateDiffPipeline": AnimateDiffPipeline,
               "AnimateDiffVideoToVideoPipeline": AnimateDiffVideoToVideoPipeline},
    aliases={"animatediff": "AnimateDiffPipeline", "text2video": "AnimateDiffPipeline",
             "video2video": "AnimateDiffVideoToVideoPipeline", "v2v": "AnimateDiffVideoToVideoPipeline"},
    export="animatediff",
    components=("unet", "motion_adapter", "vae", "text_encoder", "tokenizer", "scheduler"),
)
