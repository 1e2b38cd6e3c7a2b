"""StableVideoDiffusionPipeline over exported graphs. The call mirrors diffusers'
``StableVideoDiffusionPipeline.__call__`` argument for argument; the loop is written flat."""
from __future__ import annotations

import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import as_image_list, clip_image_inputs, open_image, postprocess_video, vae_image_inputs
from .schedulers import make_scheduler


class StableVideoDiffusionPipeline(ExportedPipeline):
    family = "svd"
    graph_names = ("image_encoder", "vae_encoder", "unet", "vae_decoder", "vae_decoder_tail")

    def __call__(
        self,
        image,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        output_type: str = "pil",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        return_dict: bool = True,
        seed: int | None = None,
        scheduler: str | None = None,
    ):
        # 0. defaults come from the export, as diffusers takes them from the unet config
        height, width, num_frames, decode_chunk_size = self.exported_defaults(
            height=height, width=width, num_frames=num_frames, decode_chunk_size=decode_chunk_size)

        # 1. check inputs
        # paths are opened once; PIL images and arrays are kept as given, because diffusers resizes
        # uint8 data with Lanczos and float data with nearest
        images = [im if isinstance(im, np.ndarray) else open_image(im) for im in as_image_list(image)]
        batch = len(images) * num_videos_per_prompt
        self.check_shapes(batch=batch, num_frames=num_frames, height=height, width=width,
                          decode_chunk_size=decode_chunk_size)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("noise_aug_strength", noise_aug_strength, minimum=0.0)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs, ("latents",))
        rng = self.make_generator(generator, seed)
        do_cfg = max_guidance_scale > 1
        axes = self.manifest.latent_axes()
        channels, h, w = axes["C"], axes["H"], axes["W"]

        # 2. encode the conditioning image (CLIP), with zeros as the unconditional embedding
        with self.timed("image_encode"):
            pixels = clip_image_inputs(images, self.manifest["feature_extractor"])
            embeds = self._encode_images("image_encoder", pixels, num_videos_per_prompt)  # [N, D]
        embeds = np.repeat(embeds, num_videos_per_prompt, axis=0)[:, None]  # [B, 1, D] (repeat-interleave)
        embeds = np.concatenate([np.zeros_like(embeds), embeds])  # [2B, 1, D]

        # 3. encode the (noise-augmented) image with the VAE
        pixels = vae_image_inputs(images, height, width)  # [N, 3, H, W] in [-1, 1]
        noise = rng.standard_normal(pixels.shape).astype(np.float32)
        pixels = pixels + np.float32(noise_aug_strength) * noise
        with self.timed("vae_encode"):
            image_latents = self._encode_images("vae_encoder", pixels, num_videos_per_prompt)  # [N, C, h, w]
        image_latents = np.tile(image_latents, (num_videos_per_prompt, 1, 1, 1))  # diffusers tiles here
        image_latents = np.concatenate([np.zeros_like(image_latents), image_latents])  # [2B, C, h, w]

        # 4. micro-conditioning: SVD was trained on fps - 1
        ids = np.array([[fps - 1, motion_bucket_id, noise_aug_strength]], np.float32)
        added_time_ids = np.repeat(ids, 2 * batch, axis=0)  # [2B, 3]

        # 5. timesteps
        sched = make_scheduler(self.manifest["scheduler"], name=scheduler)
        plan = sched.set_timesteps(num_inference_steps)

        # 6. latents
        shape = (batch, num_frames, channels, h, w)
        if latents is None:
            latents = rng.standard_normal(shape).astype(np.float32)
        else:
            latents = self.check_latents(latents, shape)
        latents = latents * np.float32(plan.init_noise_sigma)

        # 7. per-frame guidance ramp (guidance 1 everywhere when CFG is off: the graph then returns cond)
        guidance = np.tile(np.linspace(min_guidance_scale, max_guidance_scale, num_frames, dtype=np.float32)[None],
                           (batch, 1))
        if not do_cfg:
            guidance = np.ones_like(guidance)

        # 8. denoise
        def predict(model_in, t, i):
            return self.graphs["unet"](sample=model_in, timestep=np.array([t], np.float32),
                                       image_latents=image_latents, encoder_hidden_states=embeds,
                                       added_time_ids=added_time_ids, guidance_scale=guidance)[0]

        latents = self.denoise(sched, plan, latents, predict, generator=rng, on_step=self.step_hook(callback_on_step_end))

        # 9. decode in chunks over the flattened (batch * frames) axis, exactly as diffusers chunks it
        frames = self.decode_chunks(latents.reshape((-1,) + latents.shape[2:]), decode_chunk_size)
        frames = frames.reshape((batch, num_frames) + frames.shape[1:]).transpose(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
        video = postprocess_video(frames, output_type)
        return VideoOutput(frames=video) if return_dict else (video,)

    def _encode_images(self, name, pixels, copies: int):
        """Image graph ``name`` on the N images. It was exported for the whole batch (N x
        num_videos_per_prompt = ``copies``), so the images are tiled to fill it and their own rows kept
        (each row is encoded on its own)."""
        return self.graphs[name](np.tile(pixels, (copies,) + (1,) * (pixels.ndim - 1)))[0][:pixels.shape[0]]


FAMILY = FamilySpec(
    name="svd",
    pipelines={"StableVideoDiffusionPipeline": StableVideoDiffusionPipeline},
    export="svd",
    components=("unet", "vae", "image_encoder", "feature_extractor", "scheduler"),
)
