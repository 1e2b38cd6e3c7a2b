"""TextToVideoSDPipeline and VideoToVideoSDPipeline (ModelScope T2V, zeroscope) over exported
graphs. Each call mirrors the diffusers ``__call__`` argument for argument; the loops are
written flat with diffusers' numbered phases.

Layouts follow diffusers: latents are [B, C, F, h, w]; the scheduler steps on the
[B*F, C, h, w] view (so eta > 0 noise is drawn in the same order); the VAE sees frames as
[B*F, 3, H, W], in chunks of the exported decode_chunk_size.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import OUTPUT_TYPES, postprocess_video
from .manifest import ExportInvalid, ShapeMismatch
from .schedulers import add_noise, get_timesteps_for_strength, make_scheduler
from .text import load_tokenizer, prompt_batch_size, sd_uncond_tokens, warn_truncated
from .vae import run_chunks

logger = logging.getLogger(__name__)

F32 = np.float32


class _UNet3DPipeline(ExportedPipeline):
    """What both pipelines share: the tokenizer, encode_prompt, the denoising loop, VAE chunks."""

    family = "t2v"
    image_inputs = ()
    request_limits = {"guidance_scale": (0.0, 50.0), "strength": (0.0, 1.0)}

    def __init__(self, export, backend):
        super().__init__(export, backend)
        self._tokenizer = None

    # ------------------------------------------------------------------ prompt
    @property
    def tokenizer(self):
        """The export's CLIPTokenizer (copied from the snapshot's tokenizer/ folder at export time)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(
                self, "CLIPTokenizer",
                "this export has no tokenizer (it was exported with random weights or from a snapshot without "
                "tokenizer/), so it cannot tokenize a text prompt. Pass prompt_embeds= (and negative_prompt_embeds= "
                "when guidance_scale > 1), or re-export from a snapshot whose tokenizer/ folder holds vocab.json and "
                "merges.txt.")
        return self._tokenizer

    def _text_encoder(self, text_inputs) -> np.ndarray:
        # -> [B, L+1, N, D]: index k holds the prompt embeddings for clip_skip=k
        ids = np.asarray(text_inputs["input_ids"], np.int32)
        args = [ids]
        if self.manifest["text_encoder"]["use_attention_mask"]:
            args.append(np.asarray(text_inputs["attention_mask"], np.int32))
        with self.timed("text_encode"):
            return self.graphs["text_encoder"](*args)[0]

    def _tokenize(self, texts, max_length):
        return self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                              return_tensors="np")

    def _tokenize_prompt(self, texts, max_length, log=logger):
        """``_tokenize`` with diffusers' warning (on ``log``) when CLIP's max_length cut the prompt off."""
        text_inputs = self._tokenize(texts, max_length)
        warn_truncated(self.tokenizer, texts, text_inputs["input_ids"], max_length,
                       "CLIP can only handle sequences up to", log)
        return text_inputs

    def encode_prompt(self, prompt, do_classifier_free_guidance: bool, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, clip_skip=None):
        """diffusers' ``encode_prompt`` (num_images_per_prompt=1): returns (prompt_embeds,
        negative_prompt_embeds), each [B, N, D] float32; the negative one is None without guidance.
        As in diffusers, clip_skip applies to the prompt only, not to the negative prompt."""
        te = self.manifest["text_encoder"]
        layers, max_length, hidden = te["num_hidden_layers"], te["max_length"], te["hidden_size"]
        if clip_skip is not None:
            self.check_number("clip_skip", clip_skip, minimum=0, maximum=layers, integer=True)
        batch_size = prompt_batch_size(prompt, prompt_embeds)

        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            self.check_shapes(batch=len(texts))
            text_inputs = self._tokenize_prompt(texts, max_length)
            prompt_embeds = self._text_encoder(text_inputs)[:, clip_skip or 0]
        else:
            prompt_embeds = self._check_embeds("prompt_embeds", prompt_embeds, max_length, hidden)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            uncond_tokens = sd_uncond_tokens(prompt, negative_prompt, batch_size)
            self.check_shapes(batch=len(uncond_tokens))
            negative_prompt_embeds = self._text_encoder(self._tokenize(uncond_tokens, max_length))[:, 0]
        elif do_classifier_free_guidance:
            negative_prompt_embeds = self._check_embeds("negative_prompt_embeds", negative_prompt_embeds,
                                                        max_length, hidden)
        else:
            negative_prompt_embeds = None
        return prompt_embeds.astype(F32), (None if negative_prompt_embeds is None else negative_prompt_embeds.astype(F32))

    def _check_embeds(self, name, embeds, max_length, hidden):
        embeds = np.asarray(embeds, F32)
        expected = (self.shapes["batch"], max_length, hidden)
        if embeds.shape != expected:
            raise ShapeMismatch(f"{name} has shape {embeds.shape}; this export's UNet takes {expected} "
                                "(batch, tokens, text hidden size)")
        return embeds

    @staticmethod
    def check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds):
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`. Please make sure to only forward one "
                "of the two."
            )
        if prompt is None and prompt_embeds is None:
            raise ValueError(
                "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
            )
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`. Please make "
                "sure to only forward one of the two."
            )
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds`"
                    f" {np.shape(negative_prompt_embeds)}."
                )

    @staticmethod
    def check_common(output_type, callback_steps, cross_attention_kwargs, eta):
        if output_type not in OUTPUT_TYPES + ("latent",):
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of "
                             f"{list(OUTPUT_TYPES) + ['latent']}")
        if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
            raise ValueError(f"`callback_steps` has to be a positive integer but is {callback_steps} of type"
                             f" {type(callback_steps)}.")
        if cross_attention_kwargs:
            raise ValueError("cross_attention_kwargs (LoRA scale, custom attention processors) cannot change an "
                             "exported graph; fuse LoRA weights into the checkpoint before export-model")
        ExportedPipeline.check_number("eta", eta, minimum=0.0)

    # ------------------------------------------------------------------ loop pieces
    def _scheduler(self, name):
        return make_scheduler(self.manifest["scheduler"], name=name)

    def _denoise(self, sched, plan, start, latents, context, guidance, rng, eta, callback, callback_steps):
        """Steps ``start .. len(plan) - 1``. latents: [B, C, F, h, w]; context: [2B, N, D]."""
        bsz, channel, frames, hgt, wid = latents.shape

        def predict(model_in, t, i):
            return self.graphs["unet"](sample=model_in, timestep=np.array([t], F32), encoder_hidden_states=context,
                                       guidance_scale=guidance)[0]

        def to_step(x):  # the scheduler steps on [B*F, C, h, w], as diffusers reshapes before scheduler.step
            return x.transpose(0, 2, 1, 3, 4).reshape(bsz * frames, channel, hgt, wid)

        def from_step(x):
            return x.reshape(bsz, frames, channel, hgt, wid).transpose(0, 2, 1, 3, 4)

        on_step = self.legacy_step_hook(callback, callback_steps, offset=start)
        return self.denoise(sched, plan, latents, predict, start=start, generator=rng, eta=eta, on_step=on_step,
                            step_view=(to_step, from_step))

    def _decode(self, latents, output_type):
        # latents [B, C, F, h, w] -> frames [B*F, 3, H, W] chunk by chunk -> video
        if output_type == "latent":
            return latents
        bsz, channel, frames, hgt, wid = latents.shape
        flat = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4).reshape(bsz * frames, channel, hgt, wid))
        images = self.decode_chunks(flat, self.shapes["decode_chunk_size"])
        video = images.reshape((bsz, frames) + images.shape[1:]).transpose(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        return postprocess_video(video, output_type)

    def _context(self, prompt_embeds, negative_prompt_embeds, do_cfg, guidance_scale):
        # the graph always runs the pair (unconditional first); without guidance both halves are the
        # prompt and the scale is 1, which returns the conditional prediction exactly
        if do_cfg:
            return np.concatenate([negative_prompt_embeds, prompt_embeds]), np.array([guidance_scale], F32)
        return np.concatenate([prompt_embeds, prompt_embeds]), np.array([1.0], F32)


class TextToVideoSDPipeline(_UNet3DPipeline):
    graph_names = ("text_encoder", "unet", "vae_decoder", "vae_decoder_tail")

    def __call__(
        self,
        prompt: str | list | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: str | list | None = None,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback=None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
    ):
        # 0. defaults come from the export (diffusers takes them from the unet config; num_frames 16)
        height, width, num_frames = self.exported_defaults(height=height, width=width, num_frames=num_frames)

        # 1. check inputs
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self.check_common(output_type, callback_steps, cross_attention_kwargs, eta)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        self.check_shapes(num_frames=num_frames, height=height, width=width)
        rng = self.make_generator(generator, seed)

        # 2. define call parameters
        do_classifier_free_guidance = guidance_scale > 1.0

        # 3. encode input prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        batch_size = prompt_embeds.shape[0]
        context, guidance = self._context(prompt_embeds, negative_prompt_embeds, do_classifier_free_guidance,
                                          guidance_scale)

        # 4. prepare timesteps
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)

        # 5. prepare latent variables
        axes = self.manifest.latent_axes()
        channels, h, w = axes["C"], axes["H"], axes["W"]
        shape = (batch_size, channels, num_frames, h, w)
        latents = self.initial_latents(shape, latents, rng)
        latents = latents * plan.init_noise_sigma

        # 6. denoising loop (eta reaches the scheduler's step when it takes one, as prepare_extra_step_kwargs)
        latents = self._denoise(sched, plan, 0, latents, context, guidance, rng, eta, callback, callback_steps)

        # 8. post-processing
        video = self._decode(latents, output_type)
        return VideoOutput(frames=video) if return_dict else (video,)


class VideoToVideoSDPipeline(_UNet3DPipeline):
    graph_names = ("text_encoder", "unet", "vae_decoder", "vae_decoder_tail", "vae_encoder", "vae_encoder_tail")

    @classmethod
    def check_export(cls, export):
        if "vae_encoder" not in export.manifest["graphs"]:
            raise ExportInvalid(f"{export.root}: the export has no vae_encoder graph, which video-to-video needs; "
                                "re-export with this version of export-model")

    def __call__(
        self,
        prompt: str | list | None = None,
        video=None,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        guidance_scale: float = 15.0,
        negative_prompt: str | list | None = None,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback=None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
    ):
        # 1. check inputs
        self.check_number("strength", strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"The value of strength should be in (0.0, 1.0] but is {strength}: it is the fraction "
                             "of the schedule to run (1.0 ignores the input video, 0 would run no step)")
        if latents is not None:
            raise ValueError("VideoToVideoSDPipeline does not take latents=: diffusers ignores it, because the start "
                             "latents are the encoded video noised to the strength's timestep. Pass seed= or "
                             "generator= to fix that noise.")
        if video is None:
            raise ValueError("`video` is required: a path to a video file, an array (frames, H, W, 3) or "
                             "(batch, frames, H, W, 3), or a list of frames")
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self.check_common(output_type, callback_steps, cross_attention_kwargs, eta)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        rng = self.make_generator(generator, seed)

        # 2. define call parameters
        do_classifier_free_guidance = guidance_scale > 1.0

        # 3. encode input prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        batch_size = prompt_embeds.shape[0]
        context, guidance = self._context(prompt_embeds, negative_prompt_embeds, do_classifier_free_guidance,
                                          guidance_scale)

        # 4. preprocess video: [B, 3, F, H, W] in [-1, 1]
        video = self.preprocess_video(video)

        # 5. prepare timesteps
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)
        t_start, _ = get_timesteps_for_strength(plan, strength)

        # 6. prepare latent variables: encode, sample latent_dist, scale, noise to timesteps[t_start]
        bsz, channel, frames, hgt, wid = video.shape
        if bsz != batch_size:
            raise ShapeMismatch(f"`video` has batch {bsz} but there are {batch_size} prompts")
        flat = np.ascontiguousarray(video.transpose(0, 2, 1, 3, 4).reshape(bsz * frames, channel, hgt, wid))
        mean, std = self.encode_chunks(flat, self.shapes["decode_chunk_size"])
        sample = rng.standard_normal(mean.shape, dtype=F32)  # latent_dist.sample(generator)
        init_latents = F32(self.manifest["vae_scaling_factor"]) * (mean + std * sample)
        noise = rng.standard_normal(init_latents.shape, dtype=F32)
        init_latents = add_noise(plan, init_latents, noise, step_index=t_start).astype(F32)
        latents = init_latents.reshape((bsz, frames) + init_latents.shape[1:]).transpose(0, 2, 1, 3, 4)

        # 7. denoising loop
        latents = self._denoise(sched, plan, t_start, latents, context, guidance, rng, eta, callback, callback_steps)

        # 8. post-processing
        out = self._decode(latents, output_type)
        return VideoOutput(frames=out) if return_dict else (out,)

    # ------------------------------------------------------------------ video input
    def preprocess_video(self, video) -> np.ndarray:
        """diffusers' ``VideoProcessor.preprocess_video`` without resizing (the V2V pipeline's
        do_resize=False): a video file path, a [F, H, W, 3] or [B, F, H, W, 3] array (float in
        [0, 1], or uint8), or a list of PIL images / [H, W, 3] arrays -> [B, 3, F, H, W] in [-1, 1]."""
        shapes = self.shapes
        if isinstance(video, (str, os.PathLike)):
            from .video_io import read_video

            video, _ = read_video(str(video))
        if isinstance(video, (list, tuple)):
            if len(video) == 0:
                raise ValueError("`video` is an empty list")
            if isinstance(video[0], (list, tuple)):
                video = np.stack([np.stack([_frame_array(f) for f in v]) for v in video])
            else:
                video = np.stack([_frame_array(f) for f in video])
        video = np.asarray(video)
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"`video` must be shaped (frames, H, W, 3) or (batch, frames, H, W, 3), got {video.shape}")
        if video.dtype == np.uint8:
            video = video.astype(F32) / F32(255)
        elif not np.issubdtype(video.dtype, np.floating):
            raise ValueError(f"`video` must be uint8 or float in [0, 1], got dtype {video.dtype}")
        video = video.astype(F32)
        b, f, hgt, wid, _ = video.shape
        if f != shapes["num_frames"]:
            raise ShapeMismatch(
                f"the input video has {f} frames but this export was built for num_frames={shapes['num_frames']}; "
                f"trim or pad the video to {shapes['num_frames']} frames, or re-export with --frames {f}")
        if (hgt, wid) != (shapes["height"], shapes["width"]):
            raise ShapeMismatch(
                f"the input video is {wid}x{hgt} (WxH) but this export was built for {shapes['width']}x"
                f"{shapes['height']}; VideoToVideoSDPipeline does not resize, so resize the video first or re-export")
        self.check_shapes(batch=b)
        if video.min() < 0:
            logger.warning("Passing `image` as torch tensor with value range in [-1,1] is deprecated. The expected "
                           "value range for image tensor is [0,1] when passing as pytorch tensor or numpy Array. "
                           f"You passed `image` with value range [{video.min()},{video.max()}]")
        else:
            video = F32(2.0) * video - F32(1.0)
        return np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3))  # [B, 3, F, H, W]

    def encode_chunks(self, frames: np.ndarray, chunk: int):
        """frames [N, 3, H, W] -> latent_dist (mean, std), each [N, C, h, w], chunk by chunk."""
        def encode(part, tail):
            with self.timed("vae_encode"):
                return tuple(self.graphs["vae_encoder_tail" if tail else "vae_encoder"](part)[:2])

        return run_chunks(encode, frames, chunk)


def _frame_array(frame) -> np.ndarray:
    import PIL.Image

    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"), F32) / F32(255)  # VaeImageProcessor.pil_to_numpy
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame.astype(F32) / F32(255)
    return frame.astype(F32)


FAMILY = FamilySpec(
    name="t2v",
    pipelines={"TextToVideoSDPipeline": TextToVideoSDPipeline, "VideoToVideoSDPipeline": VideoToVideoSDPipeline},
    aliases={"text2video": "TextToVideoSDPipeline", "t2v": "TextToVideoSDPipeline",
             "video2video": "VideoToVideoSDPipeline", "v2v": "VideoToVideoSDPipeline"},
    export="t2v",
    components=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
)
