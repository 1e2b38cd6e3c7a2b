"""Text-to-video and video-to-video with the UNet3D family (ModelScope T2V 1.7B, zeroscope v2):
which graphs, with which static shapes, built from which snapshot components.

Graphs (B = batch, F = frames, C = latent channels, h/w = latent size, K = VAE chunk, N = token
length (the tokenizer's model_max_length, 77), L = text encoder layers, D = its hidden size):
  text_encoder   input_ids[B,N] int32 (+ attention_mask[B,N] int32 when the text encoder's config
                 sets use_attention_mask)  -> prompt_embeds[B,L+1,N,D]
                 prompt_embeds[:, k] is diffusers' encode_prompt output for clip_skip=k (k = 0 is
                 clip_skip=None: last_hidden_state), so clip_skip stays a call-time argument.
  unet           sample[B,C,F,h,w] timestep[1] encoder_hidden_states[2B,N,D] guidance_scale[1]
                                                     -> noise_pred[B,C,F,h,w]
                 one denoising step; the classifier-free-guidance pair runs as one batch of 2B
                 (unconditional first) and is combined inside the graph. With guidance off the
                 runtime feeds the prompt embeddings twice and guidance 1, which returns the
                 conditional prediction exactly.
  vae_decoder    latents[K,C,h,w]                    -> frames[K,3,H,W]   (1/scaling_factor inside)
  vae_encoder    frames[K,3,H,W] in [-1, 1]          -> mean[K,C,h,w], std[K,C,h,w]
                 (latent_dist's moments; the runtime draws the sample with its own generator)
  vae_decoder_tail / vae_encoder_tail: the same for the last (B*F mod K) frames

One export serves both TextToVideoSDPipeline and VideoToVideoSDPipeline: the manifest's
``pipeline`` names the snapshot's class, and load_pipeline(..., pipeline="video2video") picks
the other one.
"""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
from mindspore import nn, ops

from video_aot.models.loading import LoadError, load_network, read_json

from video_aot.runtime.manifest import sha256_file

from .graphs import GraphSpec, TensorSpec, VaeDecode, check_decode_chunk_size, relax_tolerance

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "added_tokens.json")


# ----------------------------------------------------------------------------- wrapper cells
class TextEncode(nn.Cell):
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


class UNetStep(nn.Cell):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, sample, timestep, encoder_hidden_states, guidance_scale):
        # sample: [B, C, F, h, w] (already scaled by the scheduler); encoder_hidden_states: [2B, N, D]
        # (unconditional first); guidance_scale: [1]
        b = sample.shape[0]
        noise = self.unet(ops.cat((sample, sample), 0), timestep, encoder_hidden_states)
        uncond, text = noise[:b], noise[b:]
        return uncond + guidance_scale * (text - uncond)


class VaeEncode(nn.Cell):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, frames):
        return self.vae.encode_moments(frames)


# ----------------------------------------------------------------------------- helpers
def parse_forward_chunking(value):
    """None / "none" -> None; "SIZE" or "SIZE:DIM" or (size, dim) or {"chunk_size", "dim"} ->
    {"chunk_size": int, "dim": 0 or 1} (diffusers' unet.enable_forward_chunking(chunk_size, dim))."""
    if value is None or value == "none":
        return None
    if isinstance(value, dict):
        size, dim = value.get("chunk_size"), value.get("dim", 0)
    elif isinstance(value, (tuple, list)):
        size, dim = (tuple(value) + (0,))[:2]
    else:
        text = str(value)
        size, _, dim = text.partition(":")
        try:
            size, dim = int(size), int(dim or 0)
        except ValueError:
            raise ValueError(f"forward chunking {value!r}: expected CHUNK_SIZE or CHUNK_SIZE:DIM "
                             "(e.g. 1:1 = diffusers' enable_forward_chunking(chunk_size=1, dim=1)), or none") from None
    if not isinstance(size, int) or size < 1 or dim not in (0, 1):
        raise ValueError(f"forward chunking {value!r}: chunk_size must be a positive int and dim 0 (batch) "
                         "or 1 (sequence)")
    return {"chunk_size": size, "dim": dim}


def find_tokenizer(*folders) -> Path | None:
    """The first ``<folder>/tokenizer`` holding a CLIP BPE vocabulary (vocab.json + merges.txt)
    or a tokenizers ``tokenizer.json``."""
    for folder in folders:
        if folder is None:
            continue
        tok = Path(folder) / "tokenizer"
        if (tok / "tokenizer.json").is_file() or ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()):
            return tok
    return None


# ----------------------------------------------------------------------------- plan
def plan(snapshot: Path, weights: Path | None, frames: int, height: int, width: int, batch: int = 1,
         dtype: str = "fp32", decode_chunk_size: int | None = None, variant: str | None = None,
         forward_chunking=None):
    """(graphs, manifest fields) for a TextToVideoSD / VideoToVideoSD export. ``weights=None``
    exports random weights (no tokenizer needed: pass prompt_embeds at run time, or export from a
    snapshot that has tokenizer/)."""
    index = read_json(snapshot / "model_index.json")
    pipeline = index["_class_name"]
    configs = {name: read_json(snapshot / name / "config.json") for name in ("unet", "vae", "text_encoder")}
    scheduler = read_json(snapshot / "scheduler" / "scheduler_config.json")
    unet_cfg, vae_cfg, text_cfg = configs["unet"], configs["vae"], configs["text_encoder"]
    scale = 2 ** (len(vae_cfg.get("block_out_channels", (64,))) - 1)
    if frames < 1 or batch < 1:
        raise ValueError(f"frames ({frames}) and batch ({batch}) must be positive")
    if height % 8 or width % 8 or height % scale or width % scale:
        raise ValueError(f"`height` and `width` have to be divisible by 8 (and by the VAE factor {scale}) "
                         f"but are {height} and {width}.")
    total = batch * frames
    chunk = check_decode_chunk_size(decode_chunk_size, total, default=total)  # diffusers decodes all at once
    latent = vae_cfg.get("latent_channels", 4)
    if unet_cfg.get("in_channels", 4) != latent or unet_cfg.get("out_channels", 4) != latent:
        raise ValueError(f"unet in/out channels ({unet_cfg.get('in_channels')}, {unet_cfg.get('out_channels')}) "
                         f"must equal the VAE latent_channels {latent}")
    cross = unet_cfg.get("cross_attention_dim", 1024)
    hidden = text_cfg.get("hidden_size", 512)
    if cross != hidden:
        raise ValueError(f"unet cross_attention_dim {cross} must equal the text encoder hidden_size {hidden}")
    num_layers = text_cfg.get("num_hidden_layers", 12)
    use_mask = bool(text_cfg.get("use_attention_mask", False))
    chunking = parse_forward_chunking(forward_chunking)

    # tokenizer: copied into the export so that it is self-contained
    tok_dir = find_tokenizer(weights, snapshot)
    if tok_dir is None and weights is not None and "tokenizer" in index:
        raise LoadError(
            f"{weights}: the snapshot has no usable tokenizer/ folder (vocab.json + merges.txt, or tokenizer.json); "
            "model_index.json names a CLIPTokenizer, and the export copies it so prompts can be tokenized. "
            "Download the tokenizer files too (e.g. huggingface-cli download <repo> --include 'tokenizer/*'), "
            "or export with --random-weights and pass prompt_embeds at run time."
        )
    assets = {}
    tokenizer = None
    max_length = text_cfg.get("max_position_embeddings", 77)
    if tok_dir is not None:
        tok_cfg = read_json(tok_dir / "tokenizer_config.json") if (tok_dir / "tokenizer_config.json").is_file() else {}
        max_length = int(tok_cfg.get("model_max_length", max_length))
        files = {}
        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                assets[f"tokenizer/{name}"] = str(tok_dir / name)
                files[name] = sha256_file(tok_dir / name)
        tokenizer = {"folder": "tokenizer", "model_max_length": max_length, "files": files}
    if max_length > text_cfg.get("max_position_embeddings", 77):
        raise ValueError(f"tokenizer model_max_length {max_length} exceeds the text encoder's "
                         f"max_position_embeddings {text_cfg.get('max_position_embeddings')}")

    h, w = height // scale, width // scale
    scaling = float(vae_cfg.get("scaling_factor", 0.18215))

    def component(name):
        return (weights / name) if weights is not None else (snapshot / name)

    def load(name, **kwargs):
        cell, _ = load_network(component(name), variant=variant, dtype=dtype, random_weights=weights is None, **kwargs)
        return cell

    def unet_step():
        unet = load("unet", num_frames=frames)
        if chunking is not None:
            unet.enable_forward_chunking(chunking["chunk_size"], chunking["dim"])
        return UNetStep(unet)

    text_inputs = [TensorSpec("input_ids", (batch, max_length), "int32")]
    if use_mask:
        text_inputs.append(TensorSpec("attention_mask", (batch, max_length), "int32"))
    graphs = [
        (GraphSpec("text_encoder", tuple(text_inputs),
                   (TensorSpec("prompt_embeds", (batch, num_layers + 1, max_length, hidden)),),
                   dummy_overrides={"attention_mask": [[1] * max_length] * batch}),
         lambda: TextEncode(load("text_encoder"), use_mask)),
        (GraphSpec("unet", (
            TensorSpec("sample", (batch, latent, frames, h, w)),
            TensorSpec("timestep", (1,)),
            TensorSpec("encoder_hidden_states", (2 * batch, max_length, hidden)),
            TensorSpec("guidance_scale", (1,)),
        ), (TensorSpec("noise_pred", (batch, latent, frames, h, w)),),
            dummy_overrides={"timestep": [500.0], "guidance_scale": [7.5]}),
         unet_step),
    ]

    def decoder(name, k):
        return (GraphSpec(name, (TensorSpec("latents", (k, latent, h, w)),),
                          (TensorSpec("frames", (k, 3, height, width)),)),
                lambda: VaeDecode(load("vae"), scaling))

    def encoder(name, k):
        return (GraphSpec(name, (TensorSpec("frames", (k, 3, height, width)),),
                          (TensorSpec("mean", (k, latent, h, w)), TensorSpec("std", (k, latent, h, w)))),
                lambda: VaeEncode(load("vae")))

    graphs.append(decoder("vae_decoder", chunk))
    if total % chunk:
        graphs.append(decoder("vae_decoder_tail", total % chunk))
    graphs.append(encoder("vae_encoder", chunk))
    if total % chunk:
        graphs.append(encoder("vae_encoder_tail", total % chunk))
    relax_tolerance(graphs, dtype)

    manifest = {
        "pipeline": pipeline,
        "dtype": dtype,
        "shapes": {"batch": batch, "num_frames": frames, "height": height, "width": width,
                   "decode_chunk_size": chunk},
        "latent_shape": [latent, frames, h, w],  # one sample's latents, axes named by latent_layout
        "latent_layout": "CFHW",
        "vae_scale_factor": scale,
        "vae_scaling_factor": scaling,
        "scheduler": scheduler,
        "text_encoder": {"num_hidden_layers": num_layers, "hidden_size": hidden, "max_length": max_length,
                         "use_attention_mask": use_mask},
        "tokenizer": tokenizer,
        "forward_chunking": chunking,
        "components": configs,
        "assets": assets,
    }
    return graphs, manifest
