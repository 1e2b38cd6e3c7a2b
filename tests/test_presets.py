"""Presets carry the real configs of the published checkpoints; the generated tiny default
needs no download."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from video_aot.export.run import export_model
from video_aot.export.sources import resolve


def _dry(model, **kw):
    return export_model(model, "unused", random_weights=True, dry_run=True, log=lambda *a: None, **kw)


@pytest.mark.parametrize("preset,train_frames", [("svd", 14), ("svd-xt", 25)])
def test_svd_presets_plan_the_full_size_graphs(preset, train_frames):
    manifest = _dry(preset, frames=25, height=576, width=1024, decode_chunk_size=8)
    assert manifest["pipeline"] == "StableVideoDiffusionPipeline"
    assert manifest["shapes"] == {"batch": 1, "num_frames": 25, "height": 576, "width": 1024, "decode_chunk_size": 8}
    unet = manifest["components"]["unet"]
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["num_frames"] == train_frames
    assert manifest["components"]["image_encoder"]["hidden_size"] == 1280
    graphs = manifest["graphs"]
    assert graphs["unet"]["inputs"][0]["shape"] == [1, 25, 4, 72, 128]
    assert graphs["unet"]["inputs"][3]["shape"] == [2, 1, 1024]
    assert graphs["vae_encoder"]["inputs"][0]["shape"] == [1, 3, 576, 1024]
    assert graphs["vae_decoder"]["outputs"][0]["shape"] == [8, 3, 576, 1024]
    assert graphs["vae_decoder_tail"]["inputs"][0]["shape"] == [1, 4, 72, 128]  # 25 = 3 * 8 + 1
    assert manifest["scheduler"]["use_karras_sigmas"] is True
    assert manifest["source"]["weights"] == "random"


@pytest.mark.parametrize("preset,component", [("svd-xt", "unet")])  # ~30 s each: the largest one
def test_full_size_network_builds_with_the_real_parameters(preset, component):
    """Our network built from the preset's real config has exactly diffusers' parameter names and
    shapes (for SVD-XT 1.52 B parameters). Built without allocating: MindSpore's
    no_init_parameters on our side, the meta device on diffusers'."""
    import importlib

    import torch
    from mindspore.nn.utils import no_init_parameters

    from video_aot.export.sources import PRESET_DIR
    from video_aot.models.layers import checkpoint_shape, parameters_by_name
    from video_aot.models.loading import load_config

    folder = PRESET_DIR / preset / component
    raw = json.loads((folder / "config.json").read_text())
    spec, config = load_config(folder)
    with no_init_parameters():
        cell = spec.build(config)
    ours = {name: checkpoint_shape(p) for name, p in parameters_by_name(cell).items()}
    reference_cls = getattr(importlib.import_module("diffusers"), raw["_class_name"])
    with torch.device("meta"):
        reference = reference_cls.from_config(raw)
    theirs = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    wrong = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert wrong == {}
    if preset == "svd-xt":
        assert 1.5e9 < sum(int(np.prod(s)) for s in ours.values()) < 1.55e9


def test_preset_without_weights_explains_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="huggingface-cli download stabilityai/stable-video-diffusion-img2vid-xt"
                                         "(.|\n)*--random-weights"):
        resolve("svd-xt")


def test_preset_finds_weights_in_the_local_hub_cache(monkeypatch, tmp_path):
    repo = tmp_path / "models--stabilityai--stable-video-diffusion-img2vid-xt"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve("svd-xt")
    assert source.weights == snapshot.resolve() or source.weights.resolve() == snapshot.resolve()
    assert source.preset == "svd-xt"


def test_unknown_model_lists_presets():
    with pytest.raises(ValueError, match="presets: .*'svd-xt'.*tiny-svd-xt"):
        resolve("svd-xxl")


def test_generated_default_is_deterministic(tmp_path):
    from video_aot.export.tiny import write_tiny_snapshot

    a = write_tiny_snapshot("tiny-svd-xt", tmp_path / "a")
    b = write_tiny_snapshot("tiny-svd-xt", tmp_path / "b")
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "image_encoder/model.safetensors", "unet/config.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert json.loads((a / "unet" / "config.json").read_text())["num_frames"] == 25


def test_cli_reports_errors_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "video_aot.export.cli", "svd-xt", "--frames", "25", "--height", "570",
                          "--width", "1024", "--out", str(tmp_path / "x"), "--random-weights", "--dry-run"],
                         capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    assert out.returncode == 2
    assert "divisible by 8" in out.stderr and "Traceback" not in out.stderr


def test_family_option_on_another_family_is_refused():
    with pytest.raises(ValueError, match="--tiling does not apply to StableVideoDiffusionPipeline"):
        _dry("svd-xt", frames=25, height=576, width=1024, tiling=True)
    with pytest.raises(ValueError, match="--forward-chunking does not apply"):
        _dry("cogvideox-2b", frames=49, height=480, width=720, forward_chunking="1:1")
    manifest = _dry("cogvideox-2b", frames=49, height=480, width=720, tiling=True)
    assert manifest["tiling"]["tiles"] and "vae_decoder_tile_30x45" in manifest["graphs"]
    assert manifest["shapes"]["num_frames"] == 49 and manifest["latent_frames"] == 13


@pytest.mark.parametrize("preset", ["svd-xt", "modelscope-t2v", "i2vgen-xl", "text2video-zero"])
@pytest.mark.parametrize("chunk", [0, -1, 26, 2.5])
def test_decode_chunk_size_outside_the_frames_is_refused(preset, chunk):
    """0 no longer means "all frames" and a chunk above the frame count is not clamped (issue 16.11)."""
    with pytest.raises(ValueError, match=r"decode_chunk_size must be an integer from 1 to 25"):
        _dry(preset, frames=25, height=256, width=256, decode_chunk_size=chunk)
    assert _dry(preset, frames=25, height=256, width=256, decode_chunk_size=25)["shapes"]["decode_chunk_size"] == 25
