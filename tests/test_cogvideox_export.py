"""CogVideoX export plans from the presets (real configs, no weights, nothing compiled) and the
frame arithmetic / bad-input errors."""
from __future__ import annotations

import pytest

from video_aot.export.run import export_model


def _dry(model, **kw):
    return export_model(model, "unused", random_weights=True, dry_run=True, log=lambda *a: None, **kw)


def test_2b_preset_plans_the_full_size_graphs():
    m = _dry("cogvideox-2b", frames=49, height=480, width=720)
    assert m["pipeline"] == "CogVideoXPipeline" and m["latent_frames"] == 13 and m["output_frames"] == 49
    g = m["graphs"]
    assert g["text_encoder"]["inputs"][0] == {"name": "input_ids", "shape": [1, 226], "dtype": "int32"}
    assert g["text_encoder"]["outputs"][0]["shape"] == [1, 226, 4096]
    assert [t["shape"] for t in g["transformer"]["inputs"]] == [[1, 13, 16, 60, 90], [2, 226, 4096], [1], [1]]
    # decode batches: 3 latent frames first (-> 9 frames), then 2 latent frames (-> 8 frames) five times
    assert [(b["start"], b["end"], b["out"]) for b in m["decode_batches"]] == \
        [(0, 3, 9)] + [(s, s + 2, 8) for s in (3, 5, 7, 9, 11)]
    first, nxt = g["vae_decoder_first"], g["vae_decoder"]
    assert first["inputs"][0]["shape"] == [1, 16, 3, 60, 90] and first["outputs"][0]["shape"] == [1, 3, 9, 480, 720]
    caches = [t for t in nxt["inputs"] if t["name"].startswith("cache.")]
    assert len(caches) == len(nxt["outputs"]) - 1 == len(first["outputs"]) - 1 == 1 + 4 + 4 * 8 + 1
    assert caches[0]["shape"] == [1, 16, 2, 60, 90] and caches[-1]["shape"] == [1, 128, 2, 480, 720]
    assert "vae_encoder_first" not in g  # text-to-video only; with_video_encoder=True adds it


def test_5b_i2v_preset_and_video_encoder_batches():
    m = _dry("cogvideox-5b-i2v", frames=49, height=480, width=720)
    g = m["graphs"]
    assert [t["name"] for t in g["transformer"]["inputs"]] == [
        "sample", "image_latents", "encoder_hidden_states", "timestep", "guidance_scale"]
    assert g["vae_encoder_first"]["inputs"][0]["shape"] == [1, 3, 1, 480, 720]
    assert g["vae_encoder_first"]["outputs"] == [{"name": "moments", "shape": [1, 32, 1, 60, 90], "dtype": "float32"}]
    with pytest.raises(ValueError, match="learned positional embeddings"):
        _dry("cogvideox-5b-i2v", frames=49, height=480, width=640)
    v = _dry("cogvideox-5b", frames=49, height=480, width=720, with_video_encoder=True)
    assert [(b["start"], b["end"], b["out"]) for b in v["encode_batches"]] == \
        [(0, 9, 3)] + [(s, s + 8, 2) for s in (9, 17, 25, 33, 41)]


@pytest.mark.parametrize("frames,latent,out", [(8, 2, 8), (9, 3, 9), (10, 3, 9), (1, 1, 1), (13, 4, 16)])
def test_frame_counts_follow_diffusers(frames, latent, out):
    """diffusers' own tiny test uses 8 frames: 2 latent frames, decoded to 8 frames."""
    m = _dry("cogvideox-2b", frames=frames, height=480, width=720)
    assert (m["latent_frames"], m["output_frames"]) == (latent, out)


def test_bad_export_requests_are_named():
    with pytest.raises(ValueError, match="divisible by 8"):
        _dry("cogvideox-2b", frames=49, height=484, width=720)
    with pytest.raises(ValueError, match="must be positive"):
        _dry("cogvideox-5b", frames=0, height=480, width=720)
    with pytest.raises(ValueError, match="decode-chunk-size"):
        _dry("cogvideox-2b", frames=49, height=480, width=720, decode_chunk_size=4)
    with pytest.raises(ValueError, match="unsupported dtype 'fp8'"):
        _dry("cogvideox-2b", frames=49, height=480, width=720, dtype="fp8")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_plans_keep_float32_graph_io(dtype):
    """Half-precision CogVideoX exports compute in fp16/bf16 but keep every graph input and output
    (caches included) in float32, and are validated with the half-precision tolerance."""
    m = _dry("cogvideox-5b", frames=49, height=480, width=720, dtype=dtype)
    assert m["dtype"] == dtype
    for graph in m["graphs"].values():
        assert graph["tolerance"] == 2e-2
        assert {t["dtype"] for t in graph["inputs"] + graph["outputs"]} <= {"float32", "int32"}
