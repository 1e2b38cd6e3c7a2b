"""Mochi-1 export (MochiPipeline): which graphs, with which static shapes, built from which snapshot
components.

Graphs (B = batch, L = max_sequence_length (256), D = T5 width (4096), C = latent channels (12),
F = latent frames ((num_frames - 1) // 6 + 1), h/w = latent size (pixels / 8), H/W = pixels,
N = decoded frames ((F - 1) * 6 + 1)):
  text_encoder  input_ids[B,L] int32, attention_mask[B,L] int32        -> prompt_embeds[B,L,D]
  transformer   sample[B,C,F,h,w] encoder_hidden_states[2B,L,D] encoder_attention_mask[2B,L]
                timestep[1] guidance_scale[1]                           -> noise_pred[B,C,F,h,w]
                one denoising step; the CFG pair runs as one batch of 2B (negative first) and is
                combined in the graph in float32, as MochiPipeline does; the rotary grid is a constant
                of (F, h, w) inside the network.
  vae_decoder   latents[B,C,F,h,w]                                      -> frames[B,3,N,H,W]
                the whole latent video in one call (diffusers' vae.decode without tiling or
                framewise decoding), de-normalised in the graph first: latents * std / scaling_factor
                + mean (or / scaling_factor without latents_mean/std), MochiPipeline's order, float32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mindspore import Tensor, nn, ops

from video_aot.models.loading import config_from_dict
from video_aot.models.mochi import MochiTransformerConfig
from video_aot.models.mochi_vae import AutoencoderKLMochiConfig, decoded_frames

from .components import Components
from .graphs import GraphSpec, TensorSpec, guided, relax_tolerance, t5_text_encoder

# MochiPipeline's fixed factors (its __init__ hard-codes them rather than reading the configs)
VAE_SPATIAL_SCALE = 8
VAE_TEMPORAL_SCALE = 6
PATCH_SIZE = 2


# ----------------------------------------------------------------------------- wrapper cells
class TransformerStep(nn.Cell):
    """One CFG-folded step: [negative, prompt] as a batch of 2B, guidance combined in the graph."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def construct(self, sample, encoder_hidden_states, encoder_attention_mask, timestep, guidance_scale):
        # sample: [B, C, F, h, w]; encoder_hidden_states: [2B, L, D]; mask: [2B, L] -> [B, C, F, h, w]
        b = sample.shape[0]
        x = ops.cat((sample, sample), 0)
        t = ops.broadcast_to(timestep, (2 * b,))
        noise = self.transformer(x, encoder_hidden_states, t, encoder_attention_mask)  # float32
        return guided(noise, b, guidance_scale)


class VaeDecode(nn.Cell):
    """MochiPipeline's de-normalisation, then ``vae.decode``: latents [B, C, F, h, w] as the sampler
    leaves them -> frames [B, 3, N, H, W] in about [-1, 1]."""

    def __init__(self, vae, config: AutoencoderKLMochiConfig):
        super().__init__()
        self.vae = vae
        self.scaling = float(config.scaling_factor)
        self.has_mean = config.latents_mean is not None
        if self.has_mean:
            shape = (1, -1, 1, 1, 1)
            # torch.tensor(list of floats) -> float32, as the pipeline builds them
            self.mean = Tensor(np.asarray(config.latents_mean, np.float32).reshape(shape))
            self.std = Tensor(np.asarray(config.latents_std, np.float32).reshape(shape))

    def construct(self, latents):
        if self.has_mean:
            latents = latents * self.std / self.scaling + self.mean
        else:
            latents = latents / self.scaling
        return self.vae(latents)


# ----------------------------------------------------------------------------- plan
def latent_frames(num_frames: int) -> int:
    """MochiPipeline.prepare_latents: (num_frames - 1) // 6 + 1."""
    return (num_frames - 1) // VAE_TEMPORAL_SCALE + 1


def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         max_sequence_length: int | None = None, force_zeros_for_empty_prompt: bool | None = None):
    """(graphs, manifest fields) for a Mochi-1 export. ``frames`` is diffusers' ``num_frames``.
    ``max_sequence_length``: the T5 token count (default: MochiPipeline's 256).
    ``force_zeros_for_empty_prompt``: overrides the snapshot's model_index.json value, as
    ``MochiPipeline.from_pretrained(..., force_zeros_for_empty_prompt=True)`` does (genmo's original
    behaviour: an empty prompt gives zero token ids and an all-zero mask)."""
    parts = Components(snapshot, weights, variant, dtype)
    index = parts.index()
    pipeline = index["_class_name"]
    if pipeline != "MochiPipeline":
        raise ValueError(f"the mochi export serves MochiPipeline snapshots, not {pipeline}")
    if decode_chunk_size is not None:
        raise ValueError("Mochi decodes the whole latent video in one graph (diffusers' vae.decode without "
                         "framewise decoding); --decode-chunk-size does not apply to this family")
    raw = {name: parts.config(name) for name in ("transformer", "vae", "text_encoder")}
    scheduler = parts.scheduler()
    tcfg = config_from_dict(MochiTransformerConfig, raw["transformer"], "transformer/config.json")
    vcfg = config_from_dict(AutoencoderKLMochiConfig, raw["vae"], "vae/config.json")
    text_dim = raw["text_encoder"].get("d_model", 512)
    max_length = 256 if max_sequence_length is None else int(max_sequence_length)

    # request checks (diffusers' check_inputs, plus what its hard-coded factors assume)
    if frames < 1 or batch < 1 or max_length < 1:
        raise ValueError(f"frames ({frames}), batch ({batch}) and max_sequence_length ({max_length}) must be positive")
    if height % 8 or width % 8:
        raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
    step = VAE_SPATIAL_SCALE * tcfg.patch_size
    if height % step or width % step:
        raise ValueError(f"height and width must be multiples of {step} (VAE factor {VAE_SPATIAL_SCALE} x "
                         f"patch_size {tcfg.patch_size}: the transformer patchifies the latents), got "
                         f"{height}x{width}; e.g. {height // step * step or step}x{width // step * step or step}")
    if vcfg.spatial_compression_ratio != VAE_SPATIAL_SCALE or vcfg.temporal_compression_ratio != VAE_TEMPORAL_SCALE:
        raise ValueError(f"MochiPipeline hard-codes VAE factors {VAE_SPATIAL_SCALE} (space) and {VAE_TEMPORAL_SCALE} "
                         f"(time); this VAE has {vcfg.spatial_compression_ratio} and "
                         f"{vcfg.temporal_compression_ratio}, which diffusers' pipeline does not handle")
    latent = vcfg.latent_channels
    if tcfg.in_channels != latent or tcfg.output_channels != latent:
        raise ValueError(f"transformer in/out channels ({tcfg.in_channels}/{tcfg.output_channels}) must equal the "
                         f"VAE's latent_channels {latent}")
    if vcfg.latents_mean is not None and len(vcfg.latents_mean) != latent:
        raise ValueError(f"vae latents_mean/std have {len(vcfg.latents_mean)} entries but latent_channels is {latent}; "
                         "MochiPipeline de-normalises per latent channel")
    if text_dim != tcfg.text_embed_dim:
        raise ValueError(f"text encoder d_model {text_dim} must equal the transformer's text_embed_dim "
                         f"{tcfg.text_embed_dim}")
    f, h, w = latent_frames(frames), height // VAE_SPATIAL_SCALE, width // VAE_SPATIAL_SCALE
    out_frames = decoded_frames(f, vcfg)
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", False)) if force_zeros_for_empty_prompt is None \
        else bool(force_zeros_for_empty_prompt)

    # the text encoder graph; its tokenizer is copied into the export so that it is self-contained
    text_graph, text_fields = t5_text_encoder(parts, batch, max_length, text_dim, attention_mask=True)

    def transformer_step():
        return TransformerStep(parts.load("transformer", latent_frames=f, latent_height=h, latent_width=w))

    mask = np.zeros((batch, max_length), np.int32)
    mask[:, : max(1, max_length // 2)] = 1
    graphs = [
        text_graph,
        (GraphSpec("transformer",
                   (TensorSpec("sample", (batch, latent, f, h, w)),
                    TensorSpec("encoder_hidden_states", (2 * batch, max_length, text_dim)),
                    TensorSpec("encoder_attention_mask", (2 * batch, max_length)),
                    TensorSpec("timestep", (1,)), TensorSpec("guidance_scale", (1,))),
                   (TensorSpec("noise_pred", (batch, latent, f, h, w)),),
                   dummy_overrides={"encoder_attention_mask": np.concatenate([mask, mask]).astype(np.float32),
                                    "timestep": [500.0], "guidance_scale": [4.5]}),
         transformer_step),
        (GraphSpec("vae_decoder", (TensorSpec("latents", (batch, latent, f, h, w)),),
                   (TensorSpec("frames", (batch, vcfg.out_channels, out_frames, height, width)),)),
         lambda: VaeDecode(parts.load("vae"), vcfg)),
    ]
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "max_sequence_length": max_length},
        "latent_shape": [latent, f, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "CFHW",
        "latent_frames": f,
        "output_frames": out_frames,
        "vae_scale_factor_spatial": VAE_SPATIAL_SCALE,
        "vae_scale_factor_temporal": VAE_TEMPORAL_SCALE,
        "force_zeros_for_empty_prompt": force_zeros,
        "scheduler": scheduler,
        **text_fields,
        "components": raw,
    }
    return graphs, manifest


# ----------------------------------------------------------------------------- generated snapshots
# export/tiny.py format. The snapshots carry a generated T5 unigram tokenizer; the text encoder keeps
# the real vocab_size. 7 frames give 2 latent frames (12 decoded before the first 5 are dropped).
_SHAPES = {"frames": 7, "decode_chunk_size": None}
TINY_MODELS = {
    # diffusers' tests/pipelines/mochi dummy components (transformer 2x8 heads, 2 layers; VAE 32 wide,
    # one layer per block) with a small T5
    "tiny-mochi-1": {
        "base": "mochi-1",
        "configs": {
            "transformer/config.json": {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2,
                                        "pooled_projection_dim": 16, "text_embed_dim": 32, "time_embed_dim": 4,
                                        "max_sequence_length": 16},
            "vae/config.json": {"encoder_block_out_channels": [32, 32, 32, 32],
                                "decoder_block_out_channels": [32, 32, 32, 32], "layers_per_block": [1, 1, 1, 1, 1]},
            "text_encoder/config.json": {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
                                         "torch_dtype": "float32"},
        },
        "components": ("transformer", "vae", "text_encoder"),
        "tokenizer": "generated-t5",
        "shapes": dict(_SHAPES),
    },
    # Mochi-1's real widths and heads (transformer 24 heads x 128 = 3072 wide, caption stream 1536,
    # T5-XXL 4096 wide with 64 heads, the VAE's real channels) with less depth, for memory: the transformer
    # keeps 2 of its 48 blocks (a full dual-stream one and the last, context_pre_only), T5 1 of its 24
    # layers and each VAE block 1 resnet layer (3/3/4/6/3). With 4 blocks, 2 T5 layers and the real VAE the
    # snapshot was 1.87 B parameters; MindSpore 2.7.1's compiled CPU graphs held 2-3x their weights (before
    # broadcasts were expanded at export).
    "small-mochi-1": {
        "base": "mochi-1",
        "configs": {
            "transformer/config.json": {"num_layers": 2},
            "text_encoder/config.json": {"num_layers": 1, "torch_dtype": "float32"},
            "vae/config.json": {"layers_per_block": [1, 1, 1, 1, 1]},
        },
        "components": ("transformer", "vae", "text_encoder"),
        "tokenizer": "generated-t5",
        "shapes": dict(_SHAPES),
        "note": "Mochi-1's real widths and heads (transformer 24x128 heads, caption stream 1536, T5-XXL 4096 wide "
                "with 64 heads, the VAE's real channels) with random weights; the transformer keeps 2 of its 48 blocks "
                "(the last context_pre_only), the T5 encoder 1 of its 24 layers and each VAE block 1 resnet layer "
                "(of 3/3/4/6/3), for memory: MindSpore 2.7.1's compiled CPU graphs held 2-3x their weights (before "
                "broadcasts were expanded at export), and with "
                "4 blocks, 2 T5 layers and the real VAE the snapshot was 1.87 B parameters.",
    },
    "full-mochi-1": {
        "base": "mochi-1",
        "configs": {"text_encoder/config.json": {"torch_dtype": "float32"}},
        "components": ("transformer", "vae", "text_encoder"),
        "tokenizer": "generated-t5",
        "shapes": {"decode_chunk_size": None},
    },
}
