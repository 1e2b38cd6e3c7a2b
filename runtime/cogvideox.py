"""CogVideoXPipeline, CogVideoXImageToVideoPipeline and CogVideoXVideoToVideoPipeline over exported
graphs. Each call mirrors the diffusers ``__call__`` argument for argument; the loops are written
flat with diffusers' numbered phases.

Layouts follow diffusers: latents are [B, F, C, h, w]; the VAE sees [B, C, F, h, w] and runs in
diffusers' frame batches, the runtime carrying every causal conv's cache from one batch's graph
call to the next (the graphs hold no state).

Randomness: one numpy generator (``seed=`` or ``generator=``) supplies, in diffusers' order, the
initial latents, the VAE posterior sample (I2V, V2V), the V2V noise and the DPM scheduler's
per-step noise.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import OUTPUT_TYPES, as_image_list, open_image, postprocess_video, vae_image_inputs
from .manifest import ExportInvalid, ShapeMismatch
from .schedulers import get_timesteps_for_strength, make_cogvideox_scheduler
from .text import T5PromptMixin, check_prompt_or_embeds, t5_negative_prompts
from .vae import run_causal, stitch_tiles


F32 = np.float32


class _CogVideoXBase(T5PromptMixin, ExportedPipeline):
    scheduler_names = ("ddim", "dpm")  # CogVideoX's own pair
    family = "cogvideox"
    tokenizer_hint = "pass prompt_embeds= and negative_prompt_embeds="
    graph_names = ("text_encoder", "transformer", "vae_decoder_first", "vae_decoder", "vae_encoder_first",
                   "vae_encoder")
    image_inputs = ()
    request_limits = {"guidance_scale": (0.0, 50.0), "strength": (0.0, 1.0)}

    def __init__(self, export, backend):
        super().__init__(export, backend)
        self.use_tiling = False
        for name in self.manifest["graphs"]:
            if name.startswith(("vae_decoder_tile_", "vae_encoder_tile_")) and name not in self.graphs:
                self.load_graph(name)

    @classmethod
    def check_export(cls, export):
        exported = export.manifest.get("pipeline")
        if (cls.__name__ == "CogVideoXImageToVideoPipeline") != (exported == "CogVideoXImageToVideoPipeline"):
            raise ValueError(f"{export.root}: this export was built from a {exported} snapshot; {cls.__name__} needs "
                             "a transformer with the matching input channels")

    def enable_tiling(self):
        """diffusers' ``vae.enable_tiling()`` (default tile sizes and overlaps): decode (and encode,
        for I2V and V2V) in spatial tiles, blended as diffusers does. Needs an export made with
        tiling=True."""
        if not self.manifest.get("tiling"):
            raise ExportInvalid(f"{self.export.root}: this export has no tile decoder graphs; re-export with "
                                "tiling=True (export-model option) to decode in tiles")
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False

    def request_schema(self) -> dict:
        """As the base schema, with the snapshot's scheduler named as this family names it."""
        schema = super().request_schema()
        if "scheduler" in schema:
            from .schedulers import COGVIDEOX_SCHEDULERS

            kind = COGVIDEOX_SCHEDULERS.get(str(self.manifest["scheduler"].get("_class_name", "")).lower())
            if kind is not None:
                schema["scheduler"]["default"] = kind.replace("cogvideox_", "")
        return schema

    # ------------------------------------------------------------------ checks
    def check_frames(self, num_frames):
        m = self.manifest
        self.check_latent_frames(num_frames, m["latent_frames"], m["vae_scale_factor_temporal"])

    def check_size(self, height, width):
        self.check_shapes(height=height, width=width)

    # ------------------------------------------------------------------ prompt
    def _t5_embeds(self, prompt, max_sequence_length):
        """[B, L, D] for the prompts (CogVideoX's T5 runs without the mask, one row per prompt)."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        self.check_shapes(batch=len(prompt))
        ids, _ = self._t5_ids(prompt, max_sequence_length)
        with self.timed("text_encode"):
            return self.graphs["text_encoder"](ids)[0]

    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance=True, prompt_embeds=None,
                      negative_prompt_embeds=None, max_sequence_length=226):
        prompt = [prompt] if isinstance(prompt, str) else prompt
        batch_size = len(prompt) if prompt is not None else np.shape(prompt_embeds)[0]
        shape = (batch_size, max_sequence_length, self.manifest["text_encoder"]["hidden_size"])
        if prompt_embeds is None:
            prompt_embeds = self._t5_embeds(prompt, max_sequence_length)
        else:
            prompt_embeds = self.check_latents(prompt_embeds, shape)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = t5_negative_prompts(prompt, negative_prompt, batch_size)
            negative_prompt_embeds = self._t5_embeds(negative_prompt, max_sequence_length)
        elif negative_prompt_embeds is not None:
            negative_prompt_embeds = self.check_latents(negative_prompt_embeds, shape)
        return prompt_embeds.astype(F32), negative_prompt_embeds

    def check_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length):
        check_prompt_or_embeds(prompt, prompt_embeds)
        if prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `negative_prompt_embeds`.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Cannot forward both `negative_prompt` and `negative_prompt_embeds`.")
        exported = self.manifest["max_sequence_length"]
        if max_sequence_length != exported:
            raise ShapeMismatch(f"max_sequence_length={max_sequence_length}, but the text encoder and transformer were "
                                f"exported for {exported} tokens (the transformer's max_text_seq_length)")

    # ------------------------------------------------------------------ loop pieces
    def _scheduler(self, name):
        return make_cogvideox_scheduler(self.manifest["scheduler"], name=name)

    def _denoise(self, latents, prompt_embeds, sched, plan, start, guidance_scale, use_dynamic_cfg, do_cfg,
                 num_inference_steps, rng, image_latents, callback_on_step_end, eta=0.0):
        """The denoising loop from plan index ``start``; ``num_inference_steps`` is what diffusers'
        dynamic CFG formula sees (the strength-reduced count for V2V)."""
        def predict(model_in, t, i):
            g = guidance_scale
            if use_dynamic_cfg:
                g = 1 + guidance_scale * (
                    (1 - math.cos(math.pi * ((num_inference_steps - float(t)) / num_inference_steps) ** 5.0)) / 2)
            if not do_cfg:
                g = 1.0
            extra = {} if image_latents is None else {"image_latents": image_latents}
            return self.graphs["transformer"](sample=model_in, encoder_hidden_states=prompt_embeds,
                                              timestep=np.array([t], F32), guidance_scale=np.array([g], F32),
                                              **extra)[0]

        return self.denoise(sched, plan, latents, predict, start=start, generator=rng, eta=eta,
                            on_step=self.step_hook(callback_on_step_end, offset=start))

    def _check_call(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height, width,
                    max_sequence_length, num_videos_per_prompt, num_inference_steps, callback_inputs):
        """The checks every CogVideoX call starts with; returns height, width and
        max_sequence_length with the export's values where they were left at None."""
        height, width = self.exported_defaults(height=height, width=width)
        if max_sequence_length is None:
            max_sequence_length = self.manifest["max_sequence_length"]
        if num_videos_per_prompt != 1:
            raise ValueError("CogVideoX pipelines generate one video per prompt (diffusers forces "
                             "num_videos_per_prompt = 1)")
        self.check_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length)
        self.check_size(height, width)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_callback_inputs(callback_inputs, ("latents",))
        return height, width, max_sequence_length

    def _prompt_pair(self, prompt, negative_prompt, do_cfg, prompt_embeds, negative_prompt_embeds,
                     max_sequence_length):
        """(prompt_embeds [B, L, D], the transformer's text batch [negative; prompt] of 2B); without
        CFG the prompt fills both halves, as the CFG-folded graph always takes 2B."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, do_cfg, prompt_embeds, negative_prompt_embeds, max_sequence_length)
        return prompt_embeds, np.concatenate([negative_prompt_embeds if do_cfg else prompt_embeds, prompt_embeds])

    def _initial_latents(self, latents, shape, rng, plan):
        """diffusers' prepare_latents: seeded noise, or the given latents= checked against the
        export's shape; scaled by the scheduler's initial sigma."""
        latents = rng.standard_normal(shape, dtype=F32) if latents is None else self.check_latents(latents, shape)
        return latents * plan.init_noise_sigma

    def decode_latents(self, latents):
        """latents [B, F, C, h, w] (already without patch_size_t padding) -> frames [B, 3, N, H, W],
        in diffusers' latent-frame batches with the conv caches carried between graph calls."""
        z = np.ascontiguousarray(latents.transpose(0, 2, 1, 3, 4))  # [B, C, F, h, w]
        tiling = self.manifest.get("tiling")
        if self.use_tiling and (z.shape[4] > tiling["tile_latent_min_width"]
                                or z.shape[3] > tiling["tile_latent_min_height"]):
            return self._tiled_decode(z, tiling)
        return self._decode_batches(z, "vae_decoder_first", "vae_decoder")

    def _run_batches(self, x, batches, first_graph, next_graph, stage):
        # x: [B, C, F, H, W], cut along F into the manifest's batches; each graph call returns its
        # output plus the conv caches, which go into the next call -> outputs joined along F
        def first(part):
            with self.timed(stage):
                return self.graphs[first_graph](part)

        def following(part, *caches):
            with self.timed(stage):
                return self.graphs[next_graph](part, *caches)

        return run_causal(first, following, x, batches, axis=2)

    def _decode_batches(self, z, first_graph, next_graph):
        return self._run_batches(z, self.manifest["decode_batches"], first_graph, next_graph, "vae_decode")

    def _tiled_decode(self, z, tiling):
        """diffusers ``tiled_decode``: overlapping latent tiles, each decoded in frame batches with
        its own caches, blended linearly over the overlaps, then cropped and stitched."""
        def decode(t):
            name = f"vae_decoder_tile_{t['h']}x{t['w']}"
            return self._decode_batches(z[:, :, :, t["i"]:t["i"] + t["h"], t["j"]:t["j"] + t["w"]],
                                        name + "_first", name)
        return stitch_tiles(tiling, decode)

    def encode_video(self, video, rng):
        """video [B, 3, M, H, W] in [-1, 1] -> posterior sample [B, C, m, h, w] (diffusers'
        retrieve_latents(vae.encode(x), generator): mean + std * noise), batch by batch."""
        mean, logvar = np.split(self.encode_moments(video), 2, axis=1)
        axes = self.manifest.latent_axes()
        if mean.shape[3:] != (axes["H"], axes["W"]):
            raise ShapeMismatch(
                f"enable_tiling(): the tiled VAE encoder stitches this {video.shape[3]}x{video.shape[4]} (HxW) input "
                f"into {mean.shape[3]}x{mean.shape[4]} latents, but this export denoises {axes['H']}x{axes['W']} "
                "(diffusers' tiled encode gives the same size, and its pipeline fails on it too); call "
                "disable_tiling() to encode this size whole")
        std = np.exp(F32(0.5) * np.clip(logvar, F32(-30.0), F32(20.0))).astype(F32)
        samples = []
        for b in range(mean.shape[0]):  # diffusers encodes (and samples) one video at a time
            noise = rng.standard_normal(mean[b:b + 1].shape, dtype=F32)
            samples.append(mean[b:b + 1] + std[b:b + 1] * noise)
        return np.concatenate(samples)

    def encode_moments(self, video):
        """video [B, 3, M, H, W] -> the posterior's moments [B, 2C, m, h, w] (mean, then logvar), as
        diffusers' ``vae.encode(video).latent_dist.parameters``; tiled after enable_tiling()."""
        if self.manifest["encode_batches"] is None:
            raise ExportInvalid(f"{self.export.root}: this export has no VAE encoder graphs; re-export from an I2V "
                                "or V2V snapshot (or with with_video_encoder=True)")
        tiling = self.manifest.get("encode_tiling")
        if self.use_tiling and tiling and (video.shape[4] > tiling["tile_sample_min_width"]
                                           or video.shape[3] > tiling["tile_sample_min_height"]):
            def encode(t):
                name = f"vae_encoder_tile_{t['h']}x{t['w']}"
                return self._encode_batches(video[:, :, :, t["i"]:t["i"] + t["h"], t["j"]:t["j"] + t["w"]],
                                            name + "_first", name)
            return stitch_tiles(tiling, encode)
        return self._encode_batches(video, "vae_encoder_first", "vae_encoder")

    def _encode_batches(self, video, first_graph, next_graph):
        return self._run_batches(video, self.manifest["encode_batches"], first_graph, next_graph, "vae_encode")

    def _finish(self, latents, output_type, return_dict):
        if output_type == "latent":
            video = latents
        else:
            if output_type not in OUTPUT_TYPES:
                raise ValueError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)} or 'latent'")
            latents = latents[:, self.manifest["additional_frames"]:]
            video = postprocess_video(self.decode_latents(latents), output_type)
        return VideoOutput(frames=video) if return_dict else (video,)

    def _frames_in(self, frames, height, width, resize, what):
        """[-1, 1] float32 [N, 3, H, W] from a list of images / arrays; a size other than the export's
        is refused unless resize=True (then resized as diffusers' VideoProcessor does)."""
        items = [im if isinstance(im, np.ndarray) else open_image(im) for im in frames]
        for im in items:
            size = im.shape[:2] if isinstance(im, np.ndarray) else (im.height, im.width)
            if tuple(size) != (height, width) and not resize:
                raise ShapeMismatch(
                    f"the {what} is {size[1]}x{size[0]} (WxH) but this export was built for {width}x{height}; "
                    f"resize it first, or pass resize=True to resize it as diffusers does (Lanczos for images "
                    f"and uint8, nearest for float arrays)")
        return vae_image_inputs(items, height, width, vae_scale_factor=self.manifest["vae_scale_factor_spatial"])


class CogVideoXPipeline(_CogVideoXBase):
    """Text-to-video (CogVideoX-2b, -5b, 1.5)."""

    def __call__(self, prompt=None, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 6,
                 use_dynamic_cfg: bool = False, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int | None = None,
                 seed: int | None = None, scheduler: str | None = None):
        m = self.manifest
        # 1. check inputs
        height, width, max_sequence_length = self._check_call(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height, width, max_sequence_length,
            num_videos_per_prompt, num_inference_steps, callback_on_step_end_tensor_inputs)
        (num_frames,) = self.exported_defaults(num_frames=num_frames)
        self.check_frames(num_frames)
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0

        # 2. prompt embeddings: [negative, prompt] as one batch of 2B
        prompt_embeds, pair = self._prompt_pair(prompt, negative_prompt, do_cfg, prompt_embeds,
                                                negative_prompt_embeds, max_sequence_length)

        # 3. timesteps
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)

        # 4. latents [B, F, C, h, w] (F includes the patch_size_t padding)
        shape = (prompt_embeds.shape[0],) + tuple(m["latent_shape"])
        self.check_shapes(batch=shape[0])
        latents = self._initial_latents(latents, shape, rng, plan)

        # 5. denoise
        latents = self._denoise(latents, pair, sched, plan, 0, guidance_scale, use_dynamic_cfg, do_cfg,
                                num_inference_steps, rng, None, callback_on_step_end)

        # 6. decode
        return self._finish(latents, output_type, return_dict)


class CogVideoXImageToVideoPipeline(_CogVideoXBase):
    """Image-to-video (CogVideoX-5b-I2V, 1.5 I2V)."""

    image_inputs = ("image",)

    def __call__(self, image, prompt=None, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 6,
                 use_dynamic_cfg: bool = False, num_videos_per_prompt: int = 1, eta: float = 0.0,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int | None = None,
                 seed: int | None = None, scheduler: str | None = None, resize: bool = False):
        m = self.manifest
        # 1. check inputs
        height, width, max_sequence_length = self._check_call(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height, width, max_sequence_length,
            num_videos_per_prompt, num_inference_steps, callback_on_step_end_tensor_inputs)
        (num_frames,) = self.exported_defaults(num_frames=num_frames)
        self.check_frames(num_frames)
        images = as_image_list(image)
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0

        # 2. prompt embeddings
        prompt_embeds, pair = self._prompt_pair(prompt, negative_prompt, do_cfg, prompt_embeds,
                                                negative_prompt_embeds, max_sequence_length)
        batch = prompt_embeds.shape[0]
        if len(images) != batch:
            raise ValueError(f"got {len(images)} images for {batch} prompts; pass one image per prompt")

        # 3. timesteps
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)

        # 4. image latents: VAE posterior sample of the image as frame 0, zeros after
        pixels = self._frames_in(images, height, width, resize, "image")  # [B, 3, H, W]
        image_latents = self.encode_video(pixels[:, :, None], rng)  # [B, C, 1, h, w]
        image_latents = image_latents.transpose(0, 2, 1, 3, 4)  # [B, 1, C, h, w]
        scaling = F32(m["vae_scaling_factor"])
        if not m["invert_scale_latents"]:
            image_latents = scaling * image_latents
        else:
            image_latents = F32(1) / scaling * image_latents
        axes = m.latent_axes()
        model_frames, channels, h, w = axes["F"], axes["C"], axes["H"], axes["W"]
        p_t = m["patch_size_t"]
        # diffusers: zero frames up to the (T2V-padded) latent count, then p_t's first-frame copies
        base = (m["shapes"]["num_frames"] + m["additional_frames"] * m["vae_scale_factor_temporal"] - 1) \
            // m["vae_scale_factor_temporal"] + 1
        padding = np.zeros((batch, base - 1, channels, h, w), F32)
        image_latents = np.concatenate([image_latents.astype(F32), padding], 1)
        if p_t is not None:
            image_latents = np.concatenate([image_latents[:, :image_latents.shape[1] % p_t], image_latents], 1)

        # 5. latents
        latents = self._initial_latents(latents, (batch, model_frames, channels, h, w), rng, plan)

        # 6. denoise
        latents = self._denoise(latents, pair, sched, plan, 0, guidance_scale, use_dynamic_cfg, do_cfg,
                                num_inference_steps, rng, np.ascontiguousarray(image_latents), callback_on_step_end)

        # 7. decode
        return self._finish(latents, output_type, return_dict)


class CogVideoXVideoToVideoPipeline(_CogVideoXBase):
    """Video-to-video on a text-to-video checkpoint."""

    @classmethod
    def check_export(cls, export):
        super().check_export(export)
        if not export.manifest.get("video_encoder"):
            raise ExportInvalid(f"{export.root}: the export has no video encoder graphs, which video-to-video needs; "
                                "export a CogVideoXVideoToVideoPipeline snapshot or pass with_video_encoder=True")

    def __call__(self, video=None, prompt=None, negative_prompt=None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, strength: float = 0.8,
                 guidance_scale: float = 6, use_dynamic_cfg: bool = False, num_videos_per_prompt: int = 1,
                 eta: float = 0.0, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int | None = None,
                 seed: int | None = None, scheduler: str | None = None, resize: bool = False):
        m = self.manifest
        # 1. check inputs
        if (video is None) == (latents is None):
            raise ValueError("Only one of `video` or `latents` should be provided")
        height, width, max_sequence_length = self._check_call(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height, width, max_sequence_length,
            num_videos_per_prompt, num_inference_steps, callback_on_step_end_tensor_inputs)
        self.check_number("strength", strength, minimum=0.0, maximum=1.0)
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0
        if video is not None:
            video = self.preprocess_video(video, height, width, resize)  # [B, 3, F, H, W]

        # 2. prompt embeddings
        prompt_embeds, pair = self._prompt_pair(prompt, negative_prompt, do_cfg, prompt_embeds,
                                                negative_prompt_embeds, max_sequence_length)
        batch = prompt_embeds.shape[0]

        # 3. timesteps, cut by strength
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)
        t_start, _ = get_timesteps_for_strength(plan, strength)
        remaining_steps = num_inference_steps - t_start

        # 4. latents: the encoded video noised to the first remaining timestep
        shape = (batch,) + tuple(m["latent_shape"])
        if latents is None:
            if video.shape[0] != batch:
                raise ValueError(f"got {video.shape[0]} videos for {batch} prompts")
            init = self.encode_video(video, rng).transpose(0, 2, 1, 3, 4)  # [B, F, C, h, w]
            init = F32(m["vae_scaling_factor"]) * init
            noise = rng.standard_normal(shape, dtype=F32)
            latents = sched.add_noise(plan, init, noise, t_start)
        else:
            latents = self.check_latents(latents, shape)
        latents = latents * plan.init_noise_sigma

        # 5. denoise
        latents = self._denoise(latents, pair, sched, plan, t_start, guidance_scale, use_dynamic_cfg, do_cfg,
                                remaining_steps, rng, None, callback_on_step_end)

        # 6. decode
        return self._finish(latents, output_type, return_dict)

    def preprocess_video(self, video, height, width, resize) -> np.ndarray:
        """A path, a [F, H, W, 3] / [B, F, H, W, 3] array (uint8, or float in [0, 1]) or a list of
        frames (PIL images / arrays) -> [B, 3, F, H, W] in [-1, 1]."""
        m = self.manifest
        if isinstance(video, (str, os.PathLike)):
            from .video_io import read_video

            video, _ = read_video(str(video))
        if isinstance(video, np.ndarray):
            videos = [list(video)] if video.ndim == 4 else [list(v) for v in video]
        elif isinstance(video, (list, tuple)) and video and isinstance(video[0], (list, tuple)):
            videos = [list(v) for v in video]
        else:
            videos = [list(video)]
        out = []
        for frames in videos:
            if len(frames) != m["shapes"]["num_frames"]:
                raise ShapeMismatch(
                    f"the input video has {len(frames)} frames but this export was built for num_frames="
                    f"{m['shapes']['num_frames']} (the VAE encoder graphs have static frame batches); trim or pad "
                    f"the video to {m['shapes']['num_frames']} frames, or re-export with --frames {len(frames)}")
            out.append(self._frames_in(frames, height, width, resize, "video").transpose(1, 0, 2, 3))
        video = np.stack(out)
        self.check_shapes(batch=video.shape[0])
        return np.ascontiguousarray(video)


FAMILY = FamilySpec(
    name="cogvideox",
    pipelines={"CogVideoXPipeline": CogVideoXPipeline, "CogVideoXImageToVideoPipeline": CogVideoXImageToVideoPipeline,
               "CogVideoXVideoToVideoPipeline": CogVideoXVideoToVideoPipeline},
    aliases={"text2video": "CogVideoXPipeline", "t2v": "CogVideoXPipeline",
             "image2video": "CogVideoXImageToVideoPipeline", "i2v": "CogVideoXImageToVideoPipeline",
             "video2video": "CogVideoXVideoToVideoPipeline", "v2v": "CogVideoXVideoToVideoPipeline"},
    export="cogvideox",
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
)
