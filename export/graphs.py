"""What an exported graph takes and returns: names, static shapes, dtypes, a dummy-input
builder and the tolerance used to validate the exported graph against the eager network."""
from __future__ import annotations

from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from video_aot.models.loading import read_json

from .components import graph_dtype

from video_aot.runtime.manifest import TensorSpec  # noqa: F401  (the one definition, shared with the runtime)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # file stem and manifest key: "unet", "vae_decoder", ...
    inputs: tuple
    outputs: tuple
    tolerance: float = 1e-4  # relative L2 of the exported graph against the eager cell (fp32)
    # fixed values for inputs that must not be random (e.g. timestep ranges); name -> array
    dummy_overrides: dict = field(default_factory=dict, compare=False, hash=False)
    # the compute dtype of the graph's weights (its component's in the export's dtype plan); the inputs and
    # outputs keep their own dtypes (float32 and int32: the networks cast inside the graph)
    dtype: str = "fp32"

    def dummy_inputs(self, seed: int = 0) -> list:
        rng = np.random.default_rng(seed)
        out = []
        for spec in self.inputs:
            if spec.name in self.dummy_overrides:
                out.append(np.asarray(self.dummy_overrides[spec.name], dtype=spec.dtype).reshape(spec.shape))
            elif spec.dtype.startswith("int"):
                out.append(rng.integers(0, 100, spec.shape).astype(spec.dtype))
            else:
                out.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        return out

    def to_json(self) -> dict:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tolerance": self.tolerance,
            "dtype": self.dtype,
        }


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class VaeDecode(nn.Cell):
    """Thin wrapper exporting ``vae.decode`` with the 1/scaling_factor folded in:
    latents [K, C, h, w] as the sampler leaves them -> frames [K, 3, H, W] in [-1, 1]."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1.0 / scaling_factor

    def construct(self, latents):
        return self.vae.decode(latents * self.inv_scale)


def relax_tolerance(graphs, dtype, tolerance: float = 2e-2):
    """Record each graph's compute dtype under ``dtype`` (one dtype, or a plan {component: dtype}; see
    components.graph_dtype) on its spec; half-precision graphs are validated against the eager network
    with a looser tolerance."""
    for spec, _ in graphs:
        graph = graph_dtype(spec.name, dtype)
        object.__setattr__(spec, "dtype", graph)
        if graph != "fp32":
            object.__setattr__(spec, "tolerance", tolerance)


def spatial_tiling(tiling, family: str) -> bool:
    """The ``tiling`` export option of a family whose VAE tiles only in space (vae.enable_tiling()):
    None/False/True, or "spatial" (the same as True); any other mode is refused, not taken as True."""
    if tiling in (None, False, True, "spatial"):
        return bool(tiling)
    raise ValueError(f"tiling={tiling!r} does not apply to {family} exports: their VAE tiles in space only "
                     "(tiling=True or 'spatial', diffusers' vae.enable_tiling())")


def check_pixel_size(height: int, width: int, scale: int):
    """diffusers' check_inputs: ``height`` and ``width`` divisible by 8; a static graph also needs them
    divisible by the VAE's spatial factor ``scale``, and at least 8."""
    if height % 8 or width % 8 or height % scale or width % scale or height < 8 or width < 8:
        raise ValueError(f"`height` and `width` have to be divisible by 8 (and by the VAE factor {scale}) "
                         f"but are {height} and {width}.")


def check_unet_channels(unet_config: dict, latent: int):
    """A UNet that denoises the VAE's latents as they are: in and out channels = latent_channels."""
    if unet_config.get("in_channels", 4) != latent or unet_config.get("out_channels", 4) != latent:
        raise ValueError(f"unet in/out channels ({unet_config.get('in_channels')}, {unet_config.get('out_channels')}) "
                         f"must equal the VAE latent_channels {latent}")


def check_cross_attention(unet_config: dict, hidden: int, default: int):
    """The UNet's cross_attention_dim (``default``: its class's default) must be the text encoder's
    hidden_size."""
    cross = unet_config.get("cross_attention_dim", default)
    if cross != hidden:
        raise ValueError(f"unet cross_attention_dim {cross} must equal the text encoder hidden_size {hidden}")


def check_decode_chunk_size(decode_chunk_size, total: int, default: int) -> int:
    """diffusers' ``decode_chunk_size``: frames per VAE decode call, fixed at export. None takes
    ``default``; anything but an integer from 1 to ``total`` (the frames decoded, batch x frames) is
    refused rather than clamped."""
    if decode_chunk_size is None:
        return min(default, total)
    if isinstance(decode_chunk_size, bool) or not isinstance(decode_chunk_size, int) \
            or not 1 <= decode_chunk_size <= total:
        raise ValueError(f"decode_chunk_size must be an integer from 1 to {total} (the frames decoded: batch x "
                         f"frames), got {decode_chunk_size!r}")
    return decode_chunk_size


# ----------------------------------------------------------------------------- shared wrapper cells
def guided(noise, b: int, guidance_scale):
    """Classifier-free guidance of a CFG pair run as one batch: noise [2B, ...], unconditional
    first -> uncond + guidance_scale * (cond - uncond), [B, ...]."""
    uncond, text = noise[:b], noise[b:]
    return uncond + guidance_scale * (text - uncond)


class Encode(nn.Cell):
    """Exports a network's forward as is: an encoder's outputs for its inputs (token ids and mask,
    or pixel values)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def construct(self, *inputs):
        return self.encoder(*inputs)


class UNetCFGStep(nn.Cell):
    """One denoising step of a UNet taking (sample, timestep, encoder_hidden_states): the
    classifier-free-guidance pair runs as one batch of 2B (unconditional first) and is combined in
    the graph. With guidance off the runtime feeds the conditional embeddings twice and guidance 1,
    which returns the conditional prediction exactly."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, sample, timestep, encoder_hidden_states, guidance_scale):
        # sample: [B, ...] (already scaled by the scheduler); encoder_hidden_states: [2B, ...]
        # (unconditional first); guidance_scale: [1]
        b = sample.shape[0]
        noise = self.unet(ops.cat((sample, sample), 0), timestep, encoder_hidden_states)
        return guided(noise, b, guidance_scale)


class ClipTextEncode(nn.Cell):
    """All of diffusers' clip_skip choices at once: final_layer_norm(hidden_states[L - k]) for
    k = 0..L, stacked as [B, L+1, N, D]. Wraps a loaded CLIPTextModel (models/clip.py)."""

    def __init__(self, text_encoder, use_attention_mask: bool):
        super().__init__()
        from video_aot.models.clip import text_attention_bias

        self.text_model = text_encoder.text_model
        self.num_layers = text_encoder.config.num_hidden_layers
        self.use_attention_mask = use_attention_mask
        self.bias_fn = text_attention_bias

    def construct(self, input_ids, attention_mask=None):
        # input_ids: [B, N] int; attention_mask: [B, N] 1/0 (only when use_attention_mask)
        tm = self.text_model
        n = input_ids.shape[-1]
        x = tm.embeddings(input_ids)
        mask = attention_mask if self.use_attention_mask else None
        bias = self.bias_fn(tm.causal, mask, n)
        states = (x,)
        for i in range(self.num_layers):
            x = tm.encoder.layers[i](x, bias)
            states = states + (x,)
        # clip_skip k -> hidden_states[L - k], newest first
        normed = ()
        for k in range(self.num_layers + 1):
            normed = normed + (tm.final_layer_norm(states[self.num_layers - k])[:, None],)
        return ops.cat(normed, 1).astype(ms.float32)


class VaeEncodeMoments(nn.Cell):
    """``vae.encode`` up to latent_dist's moments: frames [K, 3, H, W] in [-1, 1] -> mean, std
    [K, C, h, w] (the runtime draws the sample with its own generator)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, frames):
        return self.vae.encode_moments(frames)


# ----------------------------------------------------------------------------- shared graph builders
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                        "tokenizer.json", "added_tokens.json")
CLIP_TOKENIZER_USABLE = ("tokenizer.json", ("vocab.json", "merges.txt"))
T5_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                      "added_tokens.json")
T5_TOKENIZER_USABLE = ("tokenizer.json", "spiece.model")


def clip_text_encoder(comps, batch: int, required: bool):
    """The CLIP ``text_encoder`` graph (ClipTextEncode: input_ids[n,N] (+ attention_mask[n,N] when the
    config sets use_attention_mask) -> prompt_embeds[n,L+1,N,D]) with the tokenizer copied into the
    export; N is the tokenizer's model_max_length (else max_position_embeddings). Returns (graph,
    manifest fields: "text_encoder", "tokenizer", "assets")."""
    config = comps.config("text_encoder")
    num_layers = config.get("num_hidden_layers", 12)
    hidden = config.get("hidden_size", 512)
    use_mask = bool(config.get("use_attention_mask", False))
    positions = config.get("max_position_embeddings", 77)
    folder, assets, tokenizer = comps.tokenizer(CLIP_TOKENIZER_FILES, CLIP_TOKENIZER_USABLE, required=required)
    max_length = positions
    if tokenizer is not None:
        tok_config = folder / "tokenizer_config.json"
        max_length = int((read_json(tok_config) if tok_config.is_file() else {}).get("model_max_length", max_length))
        tokenizer["model_max_length"] = max_length
    if max_length > positions:
        raise ValueError(f"tokenizer model_max_length {max_length} exceeds the text encoder's "
                         f"max_position_embeddings {config.get('max_position_embeddings')}")
    inputs = [TensorSpec("input_ids", (batch, max_length), "int32")]
    if use_mask:
        inputs.append(TensorSpec("attention_mask", (batch, max_length), "int32"))
    graph = (GraphSpec("text_encoder", tuple(inputs),
                       (TensorSpec("prompt_embeds", (batch, num_layers + 1, max_length, hidden)),),
                       dummy_overrides={"attention_mask": [[1] * max_length] * batch}),
             lambda: ClipTextEncode(comps.load("text_encoder"), use_mask))
    fields = {"text_encoder": {"num_hidden_layers": num_layers, "hidden_size": hidden, "max_length": max_length,
                               "use_attention_mask": use_mask},
              "tokenizer": tokenizer, "assets": assets}
    return graph, fields


def t5_text_encoder(comps, batch: int, max_length: int, hidden: int, attention_mask: bool = False):
    """The T5 ``text_encoder`` graph: input_ids[B,L] int32 (+ attention_mask[B,L] int32 when the
    pipeline passes the tokenizer's mask) -> prompt_embeds[B,L,D], with the tokenizer copied into the
    export. Returns (graph, manifest fields: "text_encoder", "tokenizer", "assets")."""
    _, assets, tokenizer = comps.tokenizer(T5_TOKENIZER_FILES, T5_TOKENIZER_USABLE)
    inputs = (TensorSpec("input_ids", (batch, max_length), "int32"),)
    overrides = {"input_ids": np.zeros((batch, max_length), np.int32)}
    if attention_mask:
        inputs += (TensorSpec("attention_mask", (batch, max_length), "int32"),)
        mask = np.zeros((batch, max_length), np.int32)
        mask[:, : max(1, max_length // 2)] = 1
        overrides["attention_mask"] = mask
    graph = (GraphSpec("text_encoder", inputs, (TensorSpec("prompt_embeds", (batch, max_length, hidden)),),
                       dummy_overrides=overrides),
             lambda: Encode(comps.load("text_encoder", max_positions=max(512, max_length))))
    fields = {"text_encoder": {"hidden_size": hidden, "max_length": max_length},
              "tokenizer": tokenizer, "assets": assets}
    return graph, fields


def image_encoder(comps, batch: int, size: int, embed: int):
    """The CLIP vision ``image_encoder`` graph: pixel_values[B,3,S,S] -> image_embeds[B,E]."""
    return (GraphSpec("image_encoder", (TensorSpec("pixel_values", (batch, 3, size, size)),),
                      (TensorSpec("image_embeds", (batch, embed)),)),
            lambda: Encode(comps.load("image_encoder")))


def chunked(name: str, chunk: int, total: int, graph) -> list:
    """``graph(name, chunk)``, plus ``graph(name + "_tail", total % chunk)`` for the last frames when
    ``chunk`` does not divide ``total``."""
    graphs = [graph(name, chunk)]
    if total % chunk:
        graphs.append(graph(f"{name}_tail", total % chunk))
    return graphs


def vae_decoder_graphs(comps, chunk: int, total: int, latent_size: tuple, size: tuple, scaling_factor: float,
                       temporal: bool = False) -> list:
    """A 2-D VAE's ``vae_decoder`` (and ``vae_decoder_tail``): latents[K,C,h,w] -> frames[K,3,H,W]
    (VaeDecode, 1/scaling_factor inside), K frames per call. ``temporal``: the decoder mixes the K
    frames (SVD's temporal decoder), so it is built for K."""
    latent, h, w = latent_size
    height, width = size

    def graph(name, k):
        return (GraphSpec(name, (TensorSpec("latents", (k, latent, h, w)),),
                          (TensorSpec("frames", (k, 3, height, width)),)),
                lambda: VaeDecode(comps.load("vae", **({"num_frames": k} if temporal else {})), scaling_factor))

    return chunked("vae_decoder", chunk, total, graph)


def vae_encoder_graphs(comps, chunk: int, total: int, latent_size: tuple, size: tuple,
                       input_name: str = "frames") -> list:
    """A 2-D VAE's ``vae_encoder`` (and ``vae_encoder_tail``): <input_name>[K,3,H,W] in [-1, 1] ->
    mean[K,C,h,w], std[K,C,h,w] (VaeEncodeMoments), K frames per call."""
    latent, h, w = latent_size
    height, width = size

    def graph(name, k):
        return (GraphSpec(name, (TensorSpec(input_name, (k, 3, height, width)),),
                          (TensorSpec("mean", (k, latent, h, w)), TensorSpec("std", (k, latent, h, w)))),
                lambda: VaeEncodeMoments(comps.load("vae")))

    return chunked("vae_encoder", chunk, total, graph)
