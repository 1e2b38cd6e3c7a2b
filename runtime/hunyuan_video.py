"""HunyuanVideoPipeline (HunyuanVideo text-to-video) over exported graphs. The call mirrors diffusers'
``HunyuanVideoPipeline.__call__`` argument for argument; the loop is written flat with its numbered
phases.

What is diffusers' behaviour, kept here:
- Llama: each prompt is put into ``prompt_template["template"]`` (DEFAULT_PROMPT_TEMPLATE unless
  the caller gives one), tokenized to crop_start + max_sequence_length tokens (right padding), and
  ``hidden_states[-3]`` is cropped to [crop_start:]; the mask is cropped alike and goes on to the
  transformer. A template without ``crop_start`` gets diffusers' count (its tokenization padded to
  the tokenizer's max length, minus 2). The exported graph is built for the export's crop_start
  (95 by default); a template that crops less is padded further on the right, which causal
  attention cannot see, so the kept rows are unchanged; one that crops more is refused.
- CLIP: ``pooler_output`` of the 77-token tokenization of ``prompt`` (diffusers passes ``prompt``,
  not ``prompt_2``, to the CLIP encoder; ``prompt_2`` is only checked, and so it is here).
- Guidance: the distilled embedding takes ``guidance_scale * 1000`` rounded in the transformer's
  dtype. True CFG (``true_cfg_scale > 1`` and a negative prompt or negative embeddings) runs the
  transformer graph a second time with the negative conditioning, and combines
  ``neg + true_cfg_scale * (pos - neg)`` in float32.
- Sigmas: ``np.linspace(1, 0, n + 1)[:-1]`` (or ``sigmas=``) passed to FlowMatchEuler, which
  applies the config's shift (7.0 for HunyuanVideo).
- Decoding: latents / scaling_factor, then diffusers' framewise (temporal) tiled decode with
  blending (on by default, as in diffusers); after ``enable_tiling()`` each temporal tile is
  decoded in spatial tiles as well (exports made with tiling=True).

Static shapes: height, width, num_frames (through its latent frame count), the batch (prompts x
num_videos_per_prompt) and max_sequence_length are fixed at export time; each left at None takes the
exported value (diffusers' defaults are 720x1280, 129 frames, 256 tokens); another value is refused.

Randomness: one numpy generator (``seed=`` or ``generator=``) supplies the initial latents.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import numpy as np

from .base import ExportedPipeline, VideoOutput
from .families import FamilySpec
from .image import OUTPUT_TYPES, postprocess_video
from .manifest import ExportInvalid, ShapeMismatch
from .schedulers import FLOW_MATCH_CLASS_NAMES, make_scheduler
from .text import check_prompt_or_embeds
from .vae import framewise_decode

logger = logging.getLogger(__name__)

F32 = np.float32
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds")
DEFAULT_PROMPT_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 95,
}


class HunyuanVideoPipeline(ExportedPipeline):
    scheduler_names = tuple(sorted(FLOW_MATCH_CLASS_NAMES))  # the step graph predicts a flow velocity
    family = "hunyuan_video"
    graph_names = ("text_encoder", "text_encoder_2", "transformer")
    image_inputs = ()

    def __init__(self, export, backend):
        super().__init__(export, backend)
        for name in self.manifest["vae_decoders"]:
            self.load_graph(name)
        self._tokenizers = {}
        self._rope = None
        self.use_tiling = False

    # ------------------------------------------------------------------ diffusers' VAE switches
    def enable_tiling(self):
        """vae.enable_tiling(): decode each temporal tile in spatial tiles (needs an export made with
        tiling=True whenever the latents are larger than one spatial tile)."""
        m = self.manifest
        _, _, h, w = m["latent_shape"]
        spatial, tiles = m["vae_scale_factor_spatial"], m["vae_tiling"]
        big = w > tiles["tile_sample_min_width"] // spatial or h > tiles["tile_sample_min_height"] // spatial
        if big and not m.get("vae_spatial_tiling"):
            raise ExportInvalid(f"{self.export.root}: {m['shapes']['height']}x{m['shapes']['width']} is larger than "
                                f"one {tiles['tile_sample_min_height']}x{tiles['tile_sample_min_width']} VAE tile, and "
                                "this export has no spatial tile decoder graphs; re-export with tiling=True "
                                "(export-model --tiling)")
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False

    # ------------------------------------------------------------------ requests over a service
    def check_request(self, kwargs: dict):
        if "num_frames" in kwargs:
            self.check_frames(kwargs["num_frames"])

    # ------------------------------------------------------------------ checks
    def check_frames(self, num_frames):
        m = self.manifest
        self.check_latent_frames(num_frames, m["latent_frames"], m["vae_scale_factor_temporal"])

    def check_inputs(self, prompt, prompt_2, height, width, prompt_embeds=None,
                     callback_on_step_end_tensor_inputs=None, prompt_template=None):
        """diffusers' check_inputs, plus the export's static height and width."""
        if height % 16 != 0 or width % 16 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 16 but are {height} and {width}.")
        self.check_shapes(height=height, width=width)
        if callback_on_step_end_tensor_inputs is not None:
            self.check_callback_inputs(callback_on_step_end_tensor_inputs, CALLBACK_TENSOR_INPUTS)
        check_prompt_or_embeds(prompt, prompt_embeds)
        if prompt_2 is not None and prompt_embeds is not None:
            raise ValueError(f"Cannot forward both `prompt_2`: {prompt_2} and `prompt_embeds`. Please make sure to "
                             "only forward one of the two.")
        if prompt_2 is not None and not isinstance(prompt_2, (str, list)):
            raise ValueError(f"`prompt_2` has to be of type `str` or `list` but is {type(prompt_2)}")
        if prompt_template is not None:
            if not isinstance(prompt_template, dict):
                raise ValueError(f"`prompt_template` has to be of type `dict` but is {type(prompt_template)}")
            if "template" not in prompt_template:
                raise ValueError("`prompt_template` has to contain a key `template` but only found "
                                 f"{list(prompt_template.keys())}")

    # ------------------------------------------------------------------ prompt
    def _tokenizer(self, key: str):
        if key not in self._tokenizers:
            info = self.manifest.get(key)
            if not info:
                raise ValueError(f"{self.export.root}: this export has no {key} (exported with random weights or from "
                                 f"a snapshot without {key}/); pass prompt_embeds=, prompt_attention_mask= and "
                                 "pooled_prompt_embeds= (and the negative ones for true CFG)")
            folder = self.export.root / info["folder"]
            if not folder.is_dir():
                raise ExportInvalid(f"{self.export.root}: the tokenizer folder {info['folder']!r} is missing; "
                                    "re-export")
            from transformers import AutoTokenizer

            self._tokenizers[key] = AutoTokenizer.from_pretrained(str(folder))
        return self._tokenizers[key]

    def _dtype(self, graph: str) -> str:
        """The dtype graph ``graph`` computes in (its component's in the export's dtype plan): diffusers
        casts a component's inputs to it before the call."""
        return self.manifest.graph_dtype(graph)

    def _get_llama_prompt_embeds(self, prompt, prompt_template, num_videos_per_prompt, max_sequence_length):
        """(prompt_embeds [B * n, L, D], attention mask [B * n, L]) as diffusers' _get_llama_prompt_embeds."""
        tokenizer = self._tokenizer("tokenizer")
        raw = [prompt] if isinstance(prompt, str) else list(prompt)
        prompt = [prompt_template["template"].format(p) for p in raw]
        crop_start = prompt_template.get("crop_start", None)
        if crop_start is None:
            ids = tokenizer(prompt_template["template"], padding="max_length", return_tensors="np",
                            return_attention_mask=False)["input_ids"]
            crop_start = ids.shape[-1] - 2  # drops <|eot_id|> and the {} placeholder, as diffusers
        crop_start = int(crop_start)
        total = max_sequence_length + crop_start
        length = self.manifest["text_encoder"]["length"]
        if total > length:
            room = self.manifest["text_encoder"]["max_crop_start"]
            raise ShapeMismatch(
                f"the prompt template crops {crop_start} tokens, so the Llama encoder would take {total} tokens, but "
                f"this export's text encoder takes {length} (max_sequence_length "
                f"{self.shapes['max_sequence_length']} + crop_start {room}); use a template with crop_start <= "
                f"{room}, or re-export with crop_start={crop_start}")
        inputs = tokenizer(prompt, max_length=total, padding="max_length", truncation=True, return_tensors="np",
                           return_attention_mask=True)
        ids = np.asarray(inputs["input_ids"], np.int64)
        mask = np.asarray(inputs["attention_mask"], np.int64)
        for text, row in zip(raw, mask):
            if not row[crop_start:total].any():
                raise ValueError(
                    f"the prompt {text!r} in the prompt template is {int(row.sum())} tokens long with this tokenizer, "
                    f"and the template's crop_start={crop_start} crops all of them: the transformer's token refiner "
                    "would average over no token (diffusers returns NaN frames); use a longer prompt, or a template "
                    "whose crop_start is the length of its own prefix in this tokenizer")
        if length > total:  # more right padding than diffusers: causal attention keeps rows < total unchanged
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = np.concatenate([ids, np.full((ids.shape[0], length - total), pad, np.int64)], 1)
            mask = np.concatenate([mask, np.zeros((mask.shape[0], length - total), np.int64)], 1)
        ids = np.repeat(ids, num_videos_per_prompt, axis=0)
        mask = np.repeat(mask, num_videos_per_prompt, axis=0)
        self.check_shapes(batch=ids.shape[0])
        with self.timed("text_encode"):
            hidden = self.graphs["text_encoder"](input_ids=ids.astype(np.int32),
                                                 attention_mask=mask.astype(np.int32))[0]
        if crop_start > 0:
            hidden, mask = hidden[:, crop_start:total], mask[:, crop_start:total]
        else:
            hidden, mask = hidden[:, :total], mask[:, :total]
        return np.ascontiguousarray(hidden, F32), mask.astype(F32)

    def _get_clip_prompt_embeds(self, prompt, num_videos_per_prompt):
        """pooler_output [B * n, P] of the 77-token CLIP tokenization (truncation warned as diffusers)."""
        tokenizer = self._tokenizer("tokenizer_2")
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        length = self.manifest["text_encoder_2"]["length"]
        ids = np.asarray(tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                                   return_tensors="np")["input_ids"], np.int64)
        untruncated = np.asarray(tokenizer(prompt, padding="longest", return_tensors="np")["input_ids"])
        if untruncated.shape[-1] >= ids.shape[-1] and not np.array_equal(ids, untruncated):
            removed = tokenizer.batch_decode(untruncated[:, length - 1:-1])
            logger.warning("The following part of your input was truncated because CLIP can only handle sequences up "
                           f"to {length} tokens: {removed}")
        ids = np.repeat(ids, num_videos_per_prompt, axis=0)
        self.check_shapes(batch=ids.shape[0])
        with self.timed("text_encode"):
            pooled = self.graphs["text_encoder_2"](input_ids=ids.astype(np.int32))[0]
        return np.asarray(pooled, F32)

    def encode_prompt(self, prompt, prompt_2=None, prompt_template=DEFAULT_PROMPT_TEMPLATE, num_videos_per_prompt=1,
                      prompt_embeds=None, pooled_prompt_embeds=None, prompt_attention_mask=None,
                      max_sequence_length=256):
        """diffusers' encode_prompt: (prompt_embeds, pooled_prompt_embeds, prompt_attention_mask)."""
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self._get_llama_prompt_embeds(
                prompt, prompt_template, num_videos_per_prompt, max_sequence_length)
        if pooled_prompt_embeds is None:
            if prompt is None:
                raise ValueError("pooled_prompt_embeds is needed with prompt_embeds (diffusers would encode `prompt` "
                                 "with CLIP, and there is none)")
            # diffusers encodes `prompt` here, not `prompt_2`
            pooled_prompt_embeds = self._get_clip_prompt_embeds(prompt, num_videos_per_prompt)
        return prompt_embeds, pooled_prompt_embeds, prompt_attention_mask

    def _given(self, embeds, pooled, mask, name, batch, max_sequence_length):
        """User-given embeddings, checked against the graphs' static shapes."""
        m = self.manifest
        shapes = {"embeds": (batch, max_sequence_length, m["text_encoder"]["hidden_size"]),
                  "mask": (batch, max_sequence_length), "pooled": (batch, m["text_encoder_2"]["hidden_size"])}
        out = []
        for key, value in (("embeds", embeds), ("mask", mask), ("pooled", pooled)):
            if value is None:
                out.append(None)
                continue
            value = np.asarray(value, F32)
            if value.shape != shapes[key]:
                raise ShapeMismatch(f"{name} ({key}) has shape {value.shape}; this export takes {shapes[key]}; "
                                    f"exported shapes: {self.export.describe_shapes()}")
            out.append(value)
        embeds, mask, pooled = out
        if embeds is not None and mask is None:
            raise ValueError(f"{name}: pass the attention mask with the embeddings (prompt_attention_mask / "
                             "negative_prompt_attention_mask)")
        return embeds, pooled, mask

    # ------------------------------------------------------------------ pieces
    def _scheduler(self, name):
        sched = make_scheduler(self.manifest["scheduler"], name=name)
        if "sigmas" not in inspect.signature(sched.set_timesteps).parameters:
            raise ValueError(f"The current scheduler class {type(sched).__name__}'s `set_timesteps` does not support "
                             "custom sigmas schedules. Please check whether you are using the correct scheduler "
                             f"(HunyuanVideoPipeline passes its own sigmas; choose one of "
                             f"{sorted(FLOW_MATCH_CLASS_NAMES)}).")
        return sched

    def rope(self):
        """The transformer's 3D rotary tables (cos, sin) [N, head_dim] for the exported latent grid."""
        if self._rope is None:
            from video_aot.models.hunyuan_video import HunyuanVideoTransformerConfig, rope_cos_sin
            from video_aot.models.loading import config_from_dict

            config = config_from_dict(HunyuanVideoTransformerConfig, self.manifest["components"]["transformer"])
            _, f, h, w = self.manifest["latent_shape"]
            self._rope = rope_cos_sin(config, f, h, w)
        return self._rope

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """latents [B, C, F, h, w] as the sampler leaves them -> frames [B, 3, N, H, W]: divided by the
        scaling factor, then diffusers' framewise tiled decode (spatially tiled after enable_tiling())."""
        m = self.manifest
        tiles, spatial = m["vae_tiling"], m["vae_scale_factor_spatial"]
        temporal = m["components"]["vae"].get("temporal_compression_ratio", 4)
        z = latents.astype(F32) / F32(m["vae_scaling_factor"])
        vae_dtype = self._dtype(next(iter(m["vae_decoders"])))  # latents.to(vae.dtype) / scaling_factor
        if vae_dtype != "fp32":
            from video_aot.models.hunyuan_video import round_to_dtype

            z = round_to_dtype(latents, vae_dtype) / F32(m["vae_scaling_factor"])
        by_shape = {tuple(v): k for k, v in m["vae_decoders"].items()}

        def decode(tile):
            key = tuple(tile.shape[2:])
            if key not in by_shape:
                raise ExportInvalid(f"{self.export.root}: no decoder graph for a latent tile of {key} (frames, "
                                    f"height, width); exported tiles: {sorted(by_shape)}. Spatial tiling needs an "
                                    "export made with tiling=True")
            with self.timed("vae_decode"):
                return self.graphs[by_shape[key]](latents=np.ascontiguousarray(tile, F32))[0]

        return framewise_decode(z, decode, tiles, spatial, temporal, self.use_tiling)

    # ------------------------------------------------------------------ call
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int = 50, sigmas: list[float] | np.ndarray | None = None,
                 true_cfg_scale: float = 1.0, guidance_scale: float = 6.0, num_videos_per_prompt: int = 1,
                 generator: np.random.Generator | None = None, latents: np.ndarray | None = None,
                 prompt_embeds: np.ndarray | None = None, pooled_prompt_embeds: np.ndarray | None = None,
                 prompt_attention_mask: np.ndarray | None = None, negative_prompt_embeds: np.ndarray | None = None,
                 negative_pooled_prompt_embeds: np.ndarray | None = None,
                 negative_prompt_attention_mask: np.ndarray | None = None, output_type: str = "pil",
                 return_dict: bool = True, attention_kwargs: dict[str, Any] | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",),
                 prompt_template: dict[str, Any] = DEFAULT_PROMPT_TEMPLATE, max_sequence_length: int | None = None,
                 seed: int | None = None, scheduler: str | None = None):
        m = self.manifest
        if attention_kwargs:
            raise ValueError(f"attention_kwargs={attention_kwargs!r}: the exported transformer graph has no attention "
                             "processors or LoRA scale to pass them to; fuse LoRA weights before exporting")
        height, width, num_frames, max_sequence_length = self.exported_defaults(
            height=height, width=width, num_frames=num_frames, max_sequence_length=max_sequence_length)
        if callback_on_step_end is not None and hasattr(callback_on_step_end, "tensor_inputs"):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. check inputs
        self.check_inputs(prompt, prompt_2, height, width, prompt_embeds, callback_on_step_end_tensor_inputs,
                          prompt_template)
        self.check_frames(num_frames)
        self.check_shapes(max_sequence_length=max_sequence_length)
        self.check_number("num_videos_per_prompt", num_videos_per_prompt, minimum=1, integer=True)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        self.check_number("true_cfg_scale", true_cfg_scale)
        if output_type != "latent" and output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; choose one of {', '.join(OUTPUT_TYPES)} or 'latent'")
        has_neg_prompt = negative_prompt is not None or (
            negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None)
        do_true_cfg = true_cfg_scale > 1 and has_neg_prompt
        rng = self.make_generator(generator, seed)

        # 2. call parameters
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None:
            batch_size = len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        videos = batch_size * int(num_videos_per_prompt)
        self.check_shapes(batch=videos)

        # 3. encode the prompts (transformer dtype: the export's)
        prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = self._given(
            prompt_embeds, pooled_prompt_embeds, prompt_attention_mask, "prompt_embeds", videos, max_sequence_length)
        prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = self.encode_prompt(
            prompt, prompt_2, prompt_template, int(num_videos_per_prompt), prompt_embeds, pooled_prompt_embeds,
            prompt_attention_mask, max_sequence_length)
        if do_true_cfg:
            negative_prompt_embeds, negative_pooled_prompt_embeds, negative_prompt_attention_mask = self._given(
                negative_prompt_embeds, negative_pooled_prompt_embeds, negative_prompt_attention_mask,
                "negative_prompt_embeds", videos, max_sequence_length)
            negative_prompt_embeds, negative_pooled_prompt_embeds, negative_prompt_attention_mask = \
                self.encode_prompt(negative_prompt, negative_prompt_2, prompt_template, int(num_videos_per_prompt),
                                   negative_prompt_embeds, negative_pooled_prompt_embeds,
                                   negative_prompt_attention_mask, max_sequence_length)
        dtype = self._dtype("transformer")  # diffusers' transformer_dtype
        if dtype != "fp32":
            from video_aot.models.hunyuan_video import round_to_dtype
        else:
            def round_to_dtype(x, _):
                return np.asarray(x, F32)

        # 4. timesteps
        if sigmas is None:
            sigmas = np.linspace(1.0, 0.0, int(num_inference_steps) + 1)[:-1]
        sched = self._scheduler(scheduler)
        plan = sched.set_timesteps(sigmas=np.asarray(sigmas, np.float64))

        # 5. latents: float32 noise [B, C, F, h, w]
        shape = (videos,) + tuple(m["latent_shape"])
        latents = self.initial_latents(shape, latents, rng)

        # 6. guidance condition: guidance_scale * 1000 in the transformer's dtype
        from video_aot.models.hunyuan_video import guidance_input

        guidance = guidance_input(float(guidance_scale), videos, dtype)

        # 7. denoise
        cos, sin = self.rope()
        state = {"prompt_embeds": prompt_embeds}

        def transformer(x, t, embeds, mask, pooled):
            return self.graphs["transformer"](
                hidden_states=round_to_dtype(x, dtype), timestep=np.array([t], F32),
                encoder_hidden_states=round_to_dtype(embeds, dtype), encoder_attention_mask=round_to_dtype(mask, dtype),
                pooled_projections=round_to_dtype(pooled, dtype), guidance=guidance, rope_cos=cos, rope_sin=sin)[0]

        def predict(model_in, t, i):
            noise_pred = transformer(model_in, t, state["prompt_embeds"], prompt_attention_mask, pooled_prompt_embeds)
            if do_true_cfg:
                neg_noise_pred = transformer(model_in, t, negative_prompt_embeds, negative_prompt_attention_mask,
                                             negative_pooled_prompt_embeds)
                noise_pred = neg_noise_pred + F32(true_cfg_scale) * (noise_pred - neg_noise_pred)
            return noise_pred.astype(F32)

        on_step = self.step_hook(callback_on_step_end, callback_on_step_end_tensor_inputs, state)
        latents = self.denoise(sched, plan, latents, predict, generator=rng, on_step=on_step)

        # 8. decode
        if output_type == "latent":
            video = latents
        else:
            video = postprocess_video(self.decode_latents(latents), output_type)
        return VideoOutput(frames=video) if return_dict else (video,)


FAMILY = FamilySpec(
    name="hunyuan_video",
    pipelines={"HunyuanVideoPipeline": HunyuanVideoPipeline},
    aliases={"text2video": "HunyuanVideoPipeline", "t2v": "HunyuanVideoPipeline"},
    export="hunyuan_video",
    components=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
)
