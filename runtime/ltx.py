"""LTXPipeline and LTXImageToVideoPipeline (LTX-Video 0.9.0 / 0.9.1 / 0.9.5) over exported graphs.
Each call mirrors the diffusers ``__call__`` argument for argument; the loops are written flat with
diffusers' numbered phases.

Layouts follow diffusers: latents are packed [B, S, C] (S = latent frames x height x width tokens);
the VAE sees them unpacked, [B, C, F, h, w]. The rotary tables are computed here from
``frame_rate`` (ltx_rotary_cos_sin) and fed to the step graph.

Randomness: one numpy generator (``seed=`` or ``generator=``) supplies, in diffusers' order, the
VAE posterior samples of the conditioning images (I2V), the initial latents, and at decode time
the decode noise (timestep-conditioned VAEs) followed by the decoder's injected noise maps (which
diffusers draws with torch.randn inside the VAE resnets).

Tiled decoding (exports made with tiling=): ``enable_tiling()`` is diffusers' vae.enable_tiling()
(spatial tiles) and ``enable_framewise_decoding()`` its ``vae.use_framewise_decoding = True``
(temporal tiles); both run on runtime/vae.py's framewise_decode, one decoder graph per tile shape.
The decode noise is drawn for the whole latent video and sliced with it; each tile's decoder call
draws its own injected maps, in diffusers' tile order.
"""
from __future__ import annotations


import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import OUTPUT_TYPES, as_image_list, postprocess_video, vae_image_inputs
from .manifest import ExportInvalid, ShapeMismatch
from .schedulers import FLOW_MATCH_CLASS_NAMES, make_scheduler
from .text import T5PromptMixin
from .vae import decode_tile_shapes, framewise_decode


F32 = np.float32
TILE_ARGUMENTS = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_min_num_frames",
                  "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_stride_num_frames")
DECODE_INPUTS = ("latents", "timestep", "decode_noise_scale", "decode_noise")  # the rest are injected noise maps


def pack_latents(latents, p: int = 1, pt: int = 1):
    """LTXPipeline._pack_latents: [B, C, F, H, W] -> [B, F/pt * H/p * W/p, C * pt * p * p]."""
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f // pt, pt, h // p, p, w // p, p).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return np.ascontiguousarray(x.reshape(b, (f // pt) * (h // p) * (w // p), c * pt * p * p))


def unpack_latents(latents, f: int, h: int, w: int, p: int = 1, pt: int = 1):
    """LTXPipeline._unpack_latents: [B, S, D] -> [B, C, f * pt, h * p, w * p] (f, h, w: the token grid)."""
    b = latents.shape[0]
    x = latents.reshape(b, f, h, w, -1, pt, p, p).transpose(0, 4, 1, 5, 2, 6, 3, 7)
    return np.ascontiguousarray(x.reshape(b, x.shape[1], f * pt, h * p, w * p))


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale: float = 0.0):
    """diffusers' rescale_noise_cfg (Lin et al. 2023, 3.4): per sample, torch's unbiased std."""
    axes = tuple(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.astype(np.float64).std(axis=axes, ddof=1, keepdims=True)
    std_cfg = noise_cfg.astype(np.float64).std(axis=axes, ddof=1, keepdims=True)
    rescaled = noise_cfg * (std_text / std_cfg).astype(F32)
    return (guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg).astype(F32)


class _LTXBase(T5PromptMixin, ExportedPipeline):
    scheduler_names = tuple(sorted(FLOW_MATCH_CLASS_NAMES))  # the step graph predicts a flow velocity
    family = "ltx"
    size_multiple = 32
    graph_names = ("text_encoder", "transformer", "vae_decoder", "vae_encoder")
    image_inputs = ()
    # one step with shift_terminal: sigmas [1.0] are stretched by 0 / 0 (diffusers returns NaN frames)
    request_limits = {"num_inference_steps": (2, 500), "guidance_scale": (0.0, 50.0), "guidance_rescale": (0.0, 1.0), "frame_rate": (1, 240),
                      "decode_timestep": (0.0, 1.0), "decode_noise_scale": (0.0, 1.0)}

    def __init__(self, export, backend):
        super().__init__(export, backend)
        for name in self.manifest.get("vae_decoders", {}):
            if name not in self.graphs:
                self.load_graph(name)
        self.use_tiling = False
        self.use_framewise_decoding = False

    # ------------------------------------------------------------------ diffusers' VAE switches
    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_sample_min_num_frames: int | None = None, tile_sample_stride_height: int | None = None,
                      tile_sample_stride_width: int | None = None, tile_sample_stride_num_frames: int | None = None):
        """vae.enable_tiling(): decode in spatial tiles. The tile sizes are the export's (export options
        tiling= and tile_sample_*); sizes given here must be those."""
        asked = dict(zip(TILE_ARGUMENTS, (tile_sample_min_height, tile_sample_min_width, tile_sample_min_num_frames,
                                          tile_sample_stride_height, tile_sample_stride_width,
                                          tile_sample_stride_num_frames)))
        tiles = self._tiles()
        other = {k: v for k, v in asked.items() if v is not None and v != tiles[k]}
        if other:
            raise ValueError(f"{self.export.root}: the decoder tiles were exported for "
                             f"{ {k: tiles[k] for k in other} }, not {other}; re-export with those tile_sample_* "
                             "export options")
        self._check_switch("spatial", True, False)
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False

    def enable_framewise_decoding(self):
        """diffusers' ``vae.use_framewise_decoding = True``: decode in temporal tiles of
        tile_sample_min_num_frames every tile_sample_stride_num_frames (the export's), blended."""
        self._check_switch("framewise", False, True)
        self.use_framewise_decoding = True

    def disable_framewise_decoding(self):
        self.use_framewise_decoding = False

    def _tiles(self) -> dict:
        tiles = self.manifest.get("vae_tiling")
        if tiles is None:
            raise ExportInvalid(f"{self.export.root}: this export predates tiled decoding (no vae_tiling in its "
                                "manifest); re-export, with tiling='spatial', 'framewise' or 'spatial+framewise'")
        return tiles

    def _check_switch(self, kind: str, use_tiling: bool, use_framewise: bool):
        """Refuse a switch that changes how these latents decode on an export without its tile graphs
        (the state of both switches together is checked when a call starts)."""
        if kind not in (self.manifest.get("vae_tiling_mode") or "").split("+"):
            self._check_tile_graphs(use_tiling, use_framewise)

    def _check_tile_graphs(self, use_tiling: bool, use_framewise: bool):
        """Refuse a switch state whose tiles have no decoder graph in this export."""
        m = self.manifest
        exported = {tuple(v) for v in m["vae_decoders"].values()}
        needed = decode_tile_shapes(*m["latent_grid"], self._tiles(), m["vae_spatial_compression_ratio"],
                                    m["vae_temporal_compression_ratio"], use_tiling, use_framewise)
        missing = [s for s in needed if s not in exported]
        if missing:
            state = "+".join(n for n, on in (("spatial", use_tiling), ("framewise", use_framewise)) if on)
            raise ExportInvalid(f"{self.export.root}: {state} tiled decoding of the {m['latent_grid']} latent video "
                                f"needs decoder graphs for the latent tiles {missing} (frames, height, width), which "
                                f"this export does not have (it was exported with tiling="
                                f"{m.get('vae_tiling_mode')!r}); re-export with tiling='{state}'")

    # ------------------------------------------------------------------ requests
    def example_request(self) -> dict:
        return {**super().example_request(), "num_inference_steps": 2}

    def check_request(self, kwargs: dict):
        self.check_frames(kwargs.get("num_frames", self.shapes["num_frames"]))

    # ------------------------------------------------------------------ checks
    def check_frames(self, num_frames):
        m = self.manifest
        self.check_latent_frames(num_frames, m["latent_grid"][0], m["vae_temporal_compression_ratio"])

    def _check_call(self, prompt, height, width, num_frames, num_inference_steps, timesteps, max_sequence_length,
                    attention_kwargs, callback_inputs, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                    negative_prompt_attention_mask, num_videos_per_prompt):
        """The checks both calls start with; returns height, width, num_frames and max_sequence_length,
        each left at None taking the exported value (for the presets diffusers' defaults 512x704, 161
        frames, 128 tokens)."""
        height, width, num_frames, max_sequence_length = self.exported_defaults(
            height=height, width=width, num_frames=num_frames, max_sequence_length=max_sequence_length)
        self.check_inputs(prompt, height, width, callback_inputs, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask)
        self.check_frames(num_frames)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("num_videos_per_prompt", num_videos_per_prompt, minimum=1, integer=True)
        if self.use_tiling or self.use_framewise_decoding:  # before denoising, not at decode time
            self._check_tile_graphs(self.use_tiling, self.use_framewise_decoding)
        if timesteps is not None:
            # diffusers' retrieve_timesteps refuses timesteps= next to the sigmas these pipelines always pass
            raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom "
                             "values (LTXPipeline always passes sigmas, so diffusers refuses timesteps= too)")
        if attention_kwargs:
            raise ValueError("attention_kwargs (LoRA scale, custom attention processors) cannot change an exported "
                             "graph; fuse LoRA weights before exporting")
        exported = self.manifest["shapes"]["max_sequence_length"]
        if max_sequence_length != exported:
            raise ShapeMismatch(f"max_sequence_length={max_sequence_length}, but the text encoder and transformer were "
                                f"exported for {exported} tokens; re-export with max_sequence_length="
                                f"{max_sequence_length}")
        return height, width, num_frames, max_sequence_length

    # ------------------------------------------------------------------ prompt
    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance=True, num_videos_per_prompt=1,
                      prompt_embeds=None, negative_prompt_embeds=None, prompt_attention_mask=None,
                      negative_prompt_attention_mask=None, max_sequence_length=128):
        return self._encode_with_mask(prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt,
                                      prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                                      negative_prompt_attention_mask, max_sequence_length)

    def _text_pair(self, prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds,
                   negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask,
                   max_sequence_length):
        """(text [2B, L, D], mask [2B, L] float32, negative embeds): [negative; prompt] as diffusers
        concatenates them; without CFG the prompt fills both halves (the graph always takes 2B)."""
        pe, pm, ne, nm = self.encode_prompt(prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds,
                                            negative_prompt_embeds, prompt_attention_mask,
                                            negative_prompt_attention_mask, max_sequence_length)
        m = self.manifest
        shape = (m["shapes"]["batch"], max_sequence_length, m["text_encoder"]["hidden_size"])
        pe = self.check_latents(pe, shape)
        pm = np.asarray(pm).astype(F32).reshape(shape[:2])
        if do_cfg:
            ne = self.check_latents(ne, shape)
            nm = np.asarray(nm).astype(F32).reshape(shape[:2])
        else:
            ne, nm = pe, pm
        return np.concatenate([ne, pe]), np.concatenate([nm, pm]), ne

    # ------------------------------------------------------------------ loop pieces
    def _timesteps(self, scheduler, num_inference_steps):
        """diffusers: sigmas = linspace(1, 1/n, n) and mu = calculate_shift(latent tokens, the scheduler
        config's base/max sequence lengths and shifts); shift_terminal is in the config."""
        sched = make_scheduler(self.manifest["scheduler"], name=scheduler)
        if not hasattr(sched, "mu_for"):
            raise ValueError(f"scheduler {scheduler!r}: LTX-Video samples with FlowMatchEulerDiscreteScheduler "
                             "('flow_euler'); the step graph predicts a flow velocity")
        if num_inference_steps < 2 and sched.config.shift_terminal:
            raise ValueError(f"num_inference_steps={num_inference_steps}: with shift_terminal="
                             f"{sched.config.shift_terminal} one step stretches the sigmas [1.0] by 0 / 0 (diffusers "
                             "returns NaN frames); use at least 2 steps")
        f, h, w = self.manifest["latent_grid"]
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = sched.mu_for(f * h * w)
        return sched, sched.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)

    def _rope(self, frame_rate):
        from video_aot.models.loading import config_from_dict
        from video_aot.models.ltx import LTXVideoTransformerConfig, ltx_rotary_cos_sin

        m = self.manifest
        config = config_from_dict(LTXVideoTransformerConfig, m["components"]["transformer"], "transformer/config.json")
        f, h, w = m["latent_grid"]
        return ltx_rotary_cos_sin(config, f // m["patch_size_t"], h // m["patch_size"], w // m["patch_size"],
                                  frame_rate, m["vae_temporal_compression_ratio"], m["vae_spatial_compression_ratio"])

    def _denoise(self, sched, plan, latents, text, mask, negative_embeds, guidance_scale, guidance_rescale, do_cfg,
                 frame_rate, rng, callback_on_step_end, callback_inputs, conditioning_mask=None):
        """diffusers' denoising loop. ``conditioning_mask`` [B, S] (I2V): per-token timesteps
        t * (1 - mask), and only the latent frames after the first are stepped."""
        m = self.manifest
        cos, sin = self._rope(frame_rate)
        per_token = tuple(m.graph_entries["transformer"].inputs[3].shape) != (1,)
        batch, seq = latents.shape[:2]
        g = F32(guidance_scale if do_cfg else 1.0)
        ctx = {}
        embeds = {"prompt_embeds": text, "negative_prompt_embeds": negative_embeds}
        f, h, w = m["latent_grid"]
        p, pt = m["patch_size"], m["patch_size_t"]
        grid = (f // pt, h // p, w // p)

        def predict(model_in, t, i):
            if conditioning_mask is not None:
                ctx["first"] = unpack_latents(model_in, *grid, p, pt)[:, :, :1]
                timestep = (F32(t) * (F32(1) - conditioning_mask)).astype(F32)
            elif per_token:  # a T2V call on an image-to-video export: every token at t
                timestep = np.full((batch, seq), t, F32)
            else:
                timestep = np.array([t], F32)
            noise_pred, noise_text = self.graphs["transformer"](
                hidden_states=model_in, encoder_hidden_states=embeds["prompt_embeds"], encoder_attention_mask=mask,
                timestep=timestep, rope_cos=cos, rope_sin=sin, guidance_scale=np.array([g], F32))
            if do_cfg and guidance_rescale > 0:
                noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=guidance_rescale)
            return noise_pred

        step_view = None
        if conditioning_mask is not None:
            def to_step(x):
                return unpack_latents(x, *grid, p, pt)[:, :, 1:]

            def from_step(stepped):
                return pack_latents(np.concatenate([ctx["first"], stepped], 2), p, pt)

            step_view = (to_step, from_step)

        on_step = self.step_hook(callback_on_step_end, callback_inputs, embeds)
        return self.denoise(sched, plan, latents, predict, generator=rng, on_step=on_step, step_view=step_view)

    def decode_latents(self, latents, decode_timestep, decode_noise_scale, rng):
        """Packed latents [B, S, C] -> frames [B, 3, N, H, W] in [-1, 1]. Timestep-conditioned VAEs:
        the decode noise is drawn first, then the decoder's injected maps, as diffusers does; tiled
        (enable_tiling / enable_framewise_decoding) each tile's graph call draws its own maps."""
        m = self.manifest
        f, h, w = m["latent_grid"]
        p, pt = m["patch_size"], m["patch_size_t"]
        z = unpack_latents(latents, f // pt, h // p, w // p, p, pt)  # [B, C, F, h, w]
        batch, channels = z.shape[:2]
        fixed = {}
        if m["vae_timestep_conditioning"]:
            noise = rng.standard_normal(z.shape, dtype=F32)
            if not isinstance(decode_timestep, (list, tuple)):
                decode_timestep = [decode_timestep] * batch
            if decode_noise_scale is None:
                decode_noise_scale = decode_timestep
            elif not isinstance(decode_noise_scale, (list, tuple)):
                decode_noise_scale = [decode_noise_scale] * batch
            if len(decode_timestep) != batch or len(decode_noise_scale) != batch:
                raise ValueError(f"decode_timestep / decode_noise_scale lists need one value per video ({batch})")
            fixed = {"timestep": np.asarray(decode_timestep, F32),
                     "decode_noise_scale": np.asarray(decode_noise_scale, F32)}
            z = np.concatenate([z, noise], 1)  # the noise is sliced into tiles with the latents it mixes into
        by_shape = {tuple(v): k for k, v in m.get("vae_decoders", {"vae_decoder": [f, h, w]}).items()}

        def decode(tile):
            # tile: [B, C (+ C decode noise), T, th, tw] -> frames [B, 3, N', th * ratio, tw * ratio]
            name = by_shape.get(tuple(tile.shape[2:]))
            if name is None:
                raise ExportInvalid(f"{self.export.root}: no decoder graph for a latent tile of {tuple(tile.shape[2:])}"
                                    f" (frames, height, width); exported tiles: {sorted(by_shape)}")
            inputs = {"latents": tile[:, :channels], **fixed}
            if fixed:
                inputs["decode_noise"] = tile[:, channels:]
            for spec in m.graph_entries[name].inputs:
                if spec.name not in DECODE_INPUTS:
                    inputs[spec.name] = rng.standard_normal(tuple(spec.shape), dtype=F32)
            with self.timed("vae_decode"):
                return self.graphs[name](**{k: np.ascontiguousarray(v) for k, v in inputs.items()})[0]

        if not (self.use_tiling or self.use_framewise_decoding):
            return decode(z)
        return framewise_decode(z, decode, self._tiles(), m["vae_spatial_compression_ratio"],
                                m["vae_temporal_compression_ratio"], self.use_tiling, self.use_framewise_decoding,
                                drop_frame="last")

    def _finish(self, latents, output_type, return_dict, decode_timestep, decode_noise_scale, rng):
        if output_type == "latent":
            video = latents
        else:
            if output_type not in OUTPUT_TYPES:
                raise ValueError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)} or 'latent'")
            video = postprocess_video(self.decode_latents(latents, decode_timestep, decode_noise_scale, rng),
                                      output_type)
        return VideoOutput(frames=video) if return_dict else (video,)

    def _latent_shape(self):
        return (self.manifest["shapes"]["batch"],) + tuple(self.manifest["latent_shape"])


class LTXPipeline(_LTXBase):
    """Text-to-video."""

    def __call__(self, prompt=None, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, frame_rate: int = 25, num_inference_steps: int = 50, timesteps=None, guidance_scale: float = 3,
                 guidance_rescale: float = 0.0, num_videos_per_prompt: int = 1, generator=None, latents=None,
                 prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
                 negative_prompt_attention_mask=None, decode_timestep: float = 0.0,
                 decode_noise_scale: float | None = None, output_type: str = "pil", return_dict: bool = True,
                 attention_kwargs=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int | None = None, seed: int | None = None, scheduler: str | None = None):
        # 1. check inputs
        height, width, num_frames, max_sequence_length = self._check_call(
            prompt, height, width, num_frames, num_inference_steps, timesteps, max_sequence_length,
            attention_kwargs, callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, num_videos_per_prompt)
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0

        # 2./3. text embeddings: [negative; prompt] as one batch of 2B
        text, mask, negative = self._text_pair(prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds,
                                               negative_prompt_embeds, prompt_attention_mask,
                                               negative_prompt_attention_mask, max_sequence_length)

        # 4. latents: packed [B, S, C]
        shape = self._latent_shape()
        if latents is None:
            f, h, w = self.manifest["latent_grid"]
            noise = rng.standard_normal((shape[0], self.manifest["latent_channels"], f, h, w), dtype=F32)
            latents = pack_latents(noise, self.manifest["patch_size"], self.manifest["patch_size_t"])
        else:
            latents = self.check_latents(latents, shape)

        # 5. timesteps (dynamic shift from the latent sequence length)
        sched, plan = self._timesteps(scheduler, num_inference_steps)

        # 6./7. denoise
        latents = self._denoise(sched, plan, latents, text, mask, negative, guidance_scale, guidance_rescale, do_cfg,
                                frame_rate, rng, callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 8. decode
        return self._finish(latents, output_type, return_dict, decode_timestep, decode_noise_scale, rng)


class LTXImageToVideoPipeline(_LTXBase):
    """Image-to-video: the image's latents fill the first latent frame, which is never stepped."""

    image_inputs = ("image",)
    required_inputs = ("image", "prompt")

    @classmethod
    def check_export(cls, export):
        if not export.manifest.get("image_to_video"):
            raise ExportInvalid(f"{export.root}: this export has no VAE encoder and no per-token timestep graph, which "
                                "LTXImageToVideoPipeline needs; re-export with image_to_video=True")

    def __call__(self, image=None, prompt=None, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, frame_rate: int = 25, num_inference_steps: int = 50, timesteps=None,
                 guidance_scale: float = 3, guidance_rescale: float = 0.0, num_videos_per_prompt: int = 1,
                 generator=None, latents=None, prompt_embeds=None, prompt_attention_mask=None,
                 negative_prompt_embeds=None, negative_prompt_attention_mask=None, decode_timestep: float = 0.0,
                 decode_noise_scale: float | None = None, output_type: str = "pil", return_dict: bool = True,
                 attention_kwargs=None, callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int | None = None, seed: int | None = None, scheduler: str | None = None):
        m = self.manifest
        # 1. check inputs
        height, width, num_frames, max_sequence_length = self._check_call(
            prompt, height, width, num_frames, num_inference_steps, timesteps, max_sequence_length,
            attention_kwargs, callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask, num_videos_per_prompt)
        if latents is None and image is None:
            raise ValueError("LTXImageToVideoPipeline needs `image` (or packed `latents=`)")
        rng = self.make_generator(generator, seed)
        do_cfg = guidance_scale > 1.0

        # 2./3. text embeddings
        text, mask, negative = self._text_pair(prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds,
                                               negative_prompt_embeds, prompt_attention_mask,
                                               negative_prompt_attention_mask, max_sequence_length)

        # 4. latents: the image's normalised posterior sample in frame 0, noise elsewhere; conditioning mask
        shape = self._latent_shape()
        batch = shape[0]
        f, h, w = m["latent_grid"]
        c = m["latent_channels"]
        p, pt = m["patch_size"], m["patch_size_t"]
        cond = np.zeros((batch, 1, f, h, w), F32)
        cond[:, :, 0] = 1.0
        conditioning_mask = pack_latents(cond, p, pt)[..., 0]  # [B, S]
        if latents is not None:
            latents = self.check_latents(latents, shape)
        else:
            tiles = m.get("vae_tiling")
            if self.use_tiling and (height > tiles["tile_sample_min_height"] or width > tiles["tile_sample_min_width"]):
                raise NotImplementedError(
                    f"after enable_tiling() diffusers encodes a {height}x{width} image in spatial tiles (larger than "
                    f"one {tiles['tile_sample_min_height']}x{tiles['tile_sample_min_width']} tile); this runtime's "
                    "image encoder graph codes the whole image: disable_tiling() or pass latents=")
            images = as_image_list(image)
            if len(images) not in (1, batch):
                raise ValueError(f"got {len(images)} images for {batch} videos; pass one image, or one per video")
            pixels = vae_image_inputs(images, height, width, vae_scale_factor=m["vae_spatial_compression_ratio"])
            init = []
            for img in pixels:  # diffusers encodes (and samples) one image at a time
                noise = rng.standard_normal((1, c, 1, h, w), dtype=F32)
                with self.timed("vae_encode"):
                    init.append(self.graphs["vae_encoder"](video=np.ascontiguousarray(img[None, :, None]),
                                                           noise=noise)[0])
            init = np.repeat(np.concatenate(init), f, axis=2)  # [N, C, F, h, w]
            noise = rng.standard_normal((batch, c, f, h, w), dtype=F32)
            latents = pack_latents((init * cond + noise * (F32(1) - cond)).astype(F32), p, pt)

        # 5. timesteps
        sched, plan = self._timesteps(scheduler, num_inference_steps)

        # 6./7. denoise: per-token timesteps, the first latent frame held
        latents = self._denoise(sched, plan, latents, text, mask, negative, guidance_scale, guidance_rescale, do_cfg,
                                frame_rate, rng, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                conditioning_mask=conditioning_mask)

        # 8. decode
        return self._finish(latents, output_type, return_dict, decode_timestep, decode_noise_scale, rng)


FAMILY = FamilySpec(
    name="ltx",
    pipelines={"LTXPipeline": LTXPipeline, "LTXImageToVideoPipeline": LTXImageToVideoPipeline},
    aliases={"text2video": "LTXPipeline", "t2v": "LTXPipeline",
             "image2video": "LTXImageToVideoPipeline", "i2v": "LTXImageToVideoPipeline"},
    export="ltx",
    components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
)
