"""I2VGenXLPipeline (ali-vilab/i2vgen-xl) over exported graphs. The call mirrors diffusers'
``I2VGenXLPipeline.__call__`` argument for argument; the loop is written flat with diffusers'
numbered phases.

Layouts follow diffusers: latents are [B, C, F, h, w]; the scheduler steps on the [B*F, C, h, w]
view (so eta > 0 noise is drawn in the same order); the VAE decodes [B*F, 3, H, W] in chunks of the
exported decode_chunk_size. The conditioning image goes through diffusers' own PIL steps
(``_center_crop_wide``: a BOX resize then a centre crop; ``_resize_bilinear`` for the CLIP input),
ported below as ``center_crop_wide`` and ``resize_bilinear``.

Randomness, in diffusers' order, from the one numpy generator: the VAE posterior sample of the
image latents (diffusers draws it without a generator), the initial latents, then DDIM's eta noise.
"""
from __future__ import annotations

import logging

import numpy as np
import PIL.Image

from .base import VideoOutput
from .families import FamilySpec
from .image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, open_image
from .manifest import ShapeMismatch
from .t2v import _UNet3DPipeline
from .text import prompt_batch_size, sd_uncond_tokens

logger = logging.getLogger(__name__)

F32 = np.float32


# ----------------------------------------------------------------------------- image preprocessing
def as_pil_images(image) -> list:
    """diffusers' ``_convert_pt_to_pil`` for what the runtime takes: a PIL image, an image file, an
    (H, W, 3) uint8 array, or an (H, W, 3) float array in [0, 1] (rounded to uint8 as diffusers rounds
    a float tensor), or a list of those / an (N, H, W, 3) array -> list of RGB PIL images."""
    if isinstance(image, np.ndarray) and image.ndim == 4:
        items = list(image)
    elif isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError("`image` is an empty list")
        items = list(image)
    else:
        items = [image]
    out = []
    for item in items:
        if isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating):
            if item.ndim != 3 or item.shape[-1] != 3:
                raise ValueError(f"a float image must be shaped (H, W, 3) with values in [0, 1], got {item.shape}")
            if not np.all(np.isfinite(item)) or item.min() < 0 or item.max() > 1:
                raise ValueError("a float image must hold finite values in [0, 1]")
            item = (item * 255).round().astype(np.uint8)  # VaeImageProcessor.numpy_to_pil
        out.append(open_image(item))
    return out


def center_crop_wide(images: list, resolution: tuple) -> list:
    """diffusers' ``_center_crop_wide``: scale so the image covers ``resolution`` (W, H) (BOX resize to
    whole pixels, floor-divided as diffusers does), then crop the centre. The first image sets the scale
    and the crop box for all of them."""
    tw, th = resolution
    first = images[0]
    factor = min(first.size[0] / tw, first.size[1] / th)
    resized = [im.resize((round(im.width // factor), round(im.height // factor)), resample=PIL.Image.BOX)
               for im in images]
    left = (resized[0].width - tw) // 2
    top = (resized[0].height - th) // 2
    return [im.crop((left, top, left + tw, top + th)) for im in resized]


def resize_bilinear(images: list, resolution: tuple) -> list:
    """diffusers' ``_resize_bilinear``: PIL BILINEAR to ``resolution`` (W, H)."""
    return [im.resize(resolution, PIL.Image.BILINEAR) for im in images]


def pil_to_nchw(images: list) -> np.ndarray:
    """VaeImageProcessor.pil_to_numpy + numpy_to_pt: [N, 3, H, W] float32 in [0, 1]."""
    return np.stack([np.asarray(im, dtype=np.uint8).astype(F32) / F32(255.0) for im in images]).transpose(0, 3, 1, 2)


def clip_pixels(images: list, width: int, feature_extractor: dict) -> np.ndarray:
    """The image encoder's input as I2VGenXLPipeline prepares it: centre crop to width x width, bilinear
    to the feature extractor's crop size, then CLIP's (x - mean) / std (no rescale, resize or crop in the
    processor) -> [N, 3, S, S] float32."""
    crop = feature_extractor.get("crop_size", {"height": 224, "width": 224})
    crop_w, crop_h = (crop["width"], crop["height"]) if isinstance(crop, dict) else (int(crop), int(crop))
    x = pil_to_nchw(resize_bilinear(center_crop_wide(images, (width, width)), (crop_w, crop_h)))
    mean = np.asarray(feature_extractor.get("image_mean", OPENAI_CLIP_MEAN), F32)[None, :, None, None]
    std = np.asarray(feature_extractor.get("image_std", OPENAI_CLIP_STD), F32)[None, :, None, None]
    return ((x - mean) / std).astype(F32)


def vae_pixels(images: list, width: int, height: int) -> np.ndarray:
    """The VAE's input: centre crop to width x height, then VideoProcessor.preprocess without resizing
    (2x - 1) -> [N, 3, H, W] float32 in [-1, 1]."""
    return (F32(2.0) * pil_to_nchw(center_crop_wide(images, (width, height))) - F32(1.0)).astype(F32)


def frame_position_latents(image_latents: np.ndarray, num_frames: int) -> np.ndarray:
    """diffusers' prepare_image_latents after sampling: [N, C, h, w] -> [N, C, F, h, w], the first frame's
    latent followed by a constant mask (i + 1) / (F - 1) for each later frame i."""
    n, c, hgt, wid = image_latents.shape
    out = np.empty((n, c, num_frames, hgt, wid), F32)
    out[:, :, 0] = image_latents
    for i in range(num_frames - 1):
        out[:, :, i + 1] = F32((i + 1) / (num_frames - 1))
    return out


# ----------------------------------------------------------------------------- pipeline
class I2VGenXLPipeline(_UNet3DPipeline):
    """Reuses the UNet3D family's tokenizer, prompt checks, scheduler and chunked decode."""

    family = "i2vgen"
    graph_names = ("text_encoder", "image_encoder", "vae_encoder", "unet", "vae_decoder", "vae_decoder_tail")
    image_inputs = ("image",)
    required_inputs = ("prompt", "image")
    request_limits = {"guidance_scale": (0.0, 50.0), "target_fps": (1, 60)}

    # ------------------------------------------------------------------ prompt
    def _text_encoder(self, text_inputs) -> np.ndarray:
        # -> [P, L+1, N, D]; the graph encodes one prompt per call
        ids = np.asarray(text_inputs["input_ids"], np.int32)
        mask = np.asarray(text_inputs["attention_mask"], np.int32) if "attention_mask" in text_inputs else None
        rows = []
        for r in range(ids.shape[0]):
            args = [ids[r:r + 1]]
            if self.manifest["text_encoder"]["use_attention_mask"]:
                args.append(mask[r:r + 1])
            with self.timed("text_encode"):
                rows.append(self.graphs["text_encoder"](*args)[0])
        return np.concatenate(rows)

    def encode_prompt(self, prompt, num_videos_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, clip_skip=None):
        """diffusers' I2VGenXLPipeline.encode_prompt: (prompt_embeds, negative_prompt_embeds), each
        [P * num_videos_per_prompt, N, D] float32 (repeated per prompt); the negative one is None without
        guidance. Unlike the text-to-video pipeline, clip_skip applies to the negative prompt too."""
        te = self.manifest["text_encoder"]
        layers, max_length, hidden = te["num_hidden_layers"], te["max_length"], te["hidden_size"]
        if clip_skip is not None:
            self.check_number("clip_skip", clip_skip, minimum=0, maximum=layers, integer=True)
        layer = int(clip_skip or 0)  # graph index k = clip_skip k; None and 0 are the last hidden state
        batch_size = prompt_batch_size(prompt, prompt_embeds)

        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            text_inputs = self._tokenize_prompt(texts, max_length, logger)
            prompt_embeds = self._text_encoder(text_inputs)[:, layer]
        else:
            prompt_embeds = self._embeds("prompt_embeds", prompt_embeds, batch_size, max_length, hidden)
        prompt_embeds = np.repeat(prompt_embeds.astype(F32), num_videos_per_prompt, axis=0)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            uncond_tokens = sd_uncond_tokens(prompt, negative_prompt, batch_size)
            if len(uncond_tokens) != batch_size:  # a str negative prompt with a list of prompts: diffusers fails later
                raise ValueError(f"one negative prompt was given for {batch_size} prompts; pass a list of "
                                 f"{batch_size} negative prompts")
            negative_prompt_embeds = self._text_encoder(self._tokenize(uncond_tokens, max_length))[:, layer]
        elif do_classifier_free_guidance:
            negative_prompt_embeds = self._embeds("negative_prompt_embeds", negative_prompt_embeds, batch_size,
                                                  max_length, hidden)
        else:
            return prompt_embeds, None
        return prompt_embeds, np.repeat(negative_prompt_embeds.astype(F32), num_videos_per_prompt, axis=0)

    def _embeds(self, name, embeds, batch_size, max_length, hidden):
        embeds = np.asarray(embeds, F32)
        if embeds.shape != (batch_size, max_length, hidden):
            raise ShapeMismatch(f"{name} has shape {embeds.shape}; this export takes {(batch_size, max_length, hidden)}"
                                " (prompts, tokens, text hidden size)")
        return embeds

    # ------------------------------------------------------------------ image
    def encode_image(self, images: list, width: int, num_videos_per_prompt: int) -> np.ndarray:
        """CLIP image embeddings, repeated per prompt: [N * num_videos_per_prompt, 1, E]."""
        pixels = clip_pixels(images, width, self.manifest["feature_extractor"])
        rows = []
        for i in range(pixels.shape[0]):
            with self.timed("image_encode"):
                rows.append(self.graphs["image_encoder"](pixels[i:i + 1])[0])
        embeds = np.concatenate(rows)[:, None]  # [N, 1, E]
        return np.repeat(embeds, num_videos_per_prompt, axis=0)

    def prepare_image_latents(self, images: list, width: int, height: int, num_frames: int,
                              num_videos_per_prompt: int, rng) -> np.ndarray:
        """VAE latent of the centre-cropped image (posterior sampled with ``rng``), scaled, plus the
        per-frame position masks, tiled per prompt: [N * num_videos_per_prompt, 4, F, h, w]."""
        pixels = vae_pixels(images, width, height)
        means, stds = [], []
        for i in range(pixels.shape[0]):
            with self.timed("vae_encode"):
                mean, std = self.graphs["vae_encoder"](pixels[i:i + 1])[:2]
            means.append(mean)
            stds.append(std)
        mean, std = np.concatenate(means), np.concatenate(stds)
        sample = rng.standard_normal(mean.shape, dtype=F32)  # latent_dist.sample() over the whole batch
        latents = (mean + std * sample) * F32(self.manifest["vae_scaling_factor"])
        latents = frame_position_latents(latents.astype(F32), num_frames)
        return np.tile(latents, (num_videos_per_prompt, 1, 1, 1, 1))  # diffusers repeats (tiles) here

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        prompt: str | list | None = None,
        image=None,
        height: int | None = None,
        width: int | None = None,
        target_fps: int = 16,
        num_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: str | list | None = None,
        eta: float = 0.0,
        num_videos_per_prompt: int = 1,
        decode_chunk_size: int | None = None,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = 1,
        seed: int | None = None,
        scheduler: str | None = None,
    ):
        # 0. defaults come from the export (diffusers' 704x1280, 16 frames and decode_chunk_size 1 are the
        #    i2vgen-xl preset's export defaults)
        height, width, num_frames, decode_chunk_size = self.exported_defaults(
            height=height, width=width, num_frames=num_frames, decode_chunk_size=decode_chunk_size)

        # 1. check inputs
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if image is None:
            raise ValueError("`image` is required: a PIL image, an image file path, an (H, W, 3) uint8 array or "
                             "float array in [0, 1], or a list of those (one per prompt)")
        self.check_common(output_type, None, cross_attention_kwargs, eta)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        self.check_number("target_fps", target_fps)
        self.check_number("num_videos_per_prompt", num_videos_per_prompt, minimum=1, integer=True)
        images = as_pil_images(image)

        # 2. define call parameters
        batch_size = prompt_batch_size(prompt, prompt_embeds)
        if len(images) != batch_size:
            raise ValueError(f"got {len(images)} image(s) for {batch_size} prompt(s); I2VGenXLUNet attends to each "
                             "prompt with its own image, so pass one image per prompt")
        batch = batch_size * num_videos_per_prompt
        self.check_shapes(batch=batch, num_frames=num_frames, height=height, width=width,
                          decode_chunk_size=decode_chunk_size)
        rng = self.make_generator(generator, seed)
        do_classifier_free_guidance = guidance_scale > 1

        # 3.1 encode the text prompt; the guidance pair is one batch, unconditional first
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, num_videos_per_prompt, do_classifier_free_guidance, negative_prompt, prompt_embeds,
            negative_prompt_embeds, clip_skip)

        # 3.2.1 image embeddings (zeros for the unconditional half)
        image_embeddings = self.encode_image(images, width, num_videos_per_prompt)  # [B, 1, E]

        # 3.2.2 image latents (the same for both halves; the step graph duplicates them)
        image_latents = self.prepare_image_latents(images, width, height, num_frames, num_videos_per_prompt, rng)

        if do_classifier_free_guidance:
            context = np.concatenate([negative_prompt_embeds, prompt_embeds])
            image_context = np.concatenate([np.zeros_like(image_embeddings), image_embeddings])
            guidance = np.array([guidance_scale], F32)
        else:  # the graph runs the pair; both halves conditional with scale 1 give the conditional prediction
            context = np.concatenate([prompt_embeds, prompt_embeds])
            image_context = np.concatenate([image_embeddings, image_embeddings])
            guidance = np.array([1.0], F32)

        # 3.3 the frame-rate micro-condition
        fps = np.array([target_fps], F32)

        # 4. prepare timesteps
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(num_inference_steps)

        # 5. prepare latent variables
        axes = self.manifest.latent_axes()
        shape = (batch, axes["C"], num_frames, axes["H"], axes["W"])
        latents = self.initial_latents(shape, latents, rng)
        latents = latents * F32(plan.init_noise_sigma)

        # 7. denoising loop (eta reaches the scheduler's step when it takes one, as prepare_extra_step_kwargs)
        bsz, channel, frames, hgt, wid = shape

        def predict(model_in, t, i):
            return self.graphs["unet"](sample=model_in, timestep=np.array([t], F32), fps=fps,
                                       image_latents=image_latents, image_embeddings=image_context,
                                       encoder_hidden_states=context, guidance_scale=guidance)[0]

        def to_step(x):  # diffusers steps on [B*F, C, h, w]
            return x.transpose(0, 2, 1, 3, 4).reshape(bsz * frames, channel, hgt, wid)

        def from_step(x):
            return x.reshape(bsz, frames, channel, hgt, wid).transpose(0, 2, 1, 3, 4)

        latents = self.denoise(sched, plan, latents, predict, generator=rng, eta=eta, step_view=(to_step, from_step))

        # 8. post-processing
        video = self._decode(latents, output_type)
        return VideoOutput(frames=video) if return_dict else (video,)


FAMILY = FamilySpec(
    name="i2vgen",
    pipelines={"I2VGenXLPipeline": I2VGenXLPipeline},
    aliases={"image2video": "I2VGenXLPipeline", "i2v": "I2VGenXLPipeline"},
    export="i2vgen",
    components=("unet", "vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "scheduler"),
)
