"""The typed manifest and the generic VAE runners (runtime/manifest.py, runtime/vae.py): a manifest
is checked before anything trusts it, graphs are called by name with their declared shapes, and
the temporal tiling matches diffusers' framewise decode."""
from __future__ import annotations

import json

import numpy as np
import pytest

from video_aot.runtime.manifest import (
    BoundGraph, ExportInvalid, GraphEntry, Manifest, ShapeMismatch, TensorSpec, mindir_input_shapes, sha256_file,
    verify_export,
)
from video_aot.runtime.vae import (
    decode_tile_shapes, framewise_decode, run_causal, run_chunks, temporal_tile_starts, temporal_tiles,
)


def _entry():
    return GraphEntry("unet", "unet.mindir", ("unet.mindir",),
                      (TensorSpec("sample", (1, 2, 3)), TensorSpec("timestep", (1,), "int32")),
                      (TensorSpec("out", (1, 2, 3)),))


def test_bound_graph_takes_inputs_by_name_and_checks_shapes():
    seen = []
    graph = BoundGraph(_entry(), lambda *arrays: seen.append(arrays) or (arrays[0] * 2,))
    x = np.ones((1, 2, 3), np.float64)
    out = graph(timestep=[5], sample=x)[0]
    assert np.array_equal(out, 2 * x) and seen[0][0].dtype == np.float32 and seen[0][1].dtype == np.int32
    assert graph(x, [5])[0].shape == (1, 2, 3)
    with pytest.raises(TypeError, match=r"missing \['timestep'\], unexpected \['t'\]"):
        graph(sample=x, t=[5])
    with pytest.raises(ShapeMismatch, match=r"input sample has shape \(2, 2, 3\), the export declares \(1, 2, 3\)"):
        graph(sample=np.ones((2, 2, 3)), timestep=[5])


def _manifest(**over):
    raw = {"format_version": 2, "family": "svd", "pipeline": "StableVideoDiffusionPipeline", "shapes": {},
           "latent_shape": [5, 4, 2, 3], "latent_layout": "FCHW",
           "graphs": {"unet": {"file": "unet.mindir", "files": ["unet.mindir"],
                               "inputs": [{"name": "sample", "shape": [1, 2], "dtype": "float32"}], "outputs": []}},
           "files": {}}
    raw.update(over)
    return raw


def test_manifest_checks_its_own_fields():
    assert Manifest(_manifest()).latent_axes() == {"F": 5, "C": 4, "H": 2, "W": 3}
    with pytest.raises(ExportInvalid, match="format_version 1"):
        Manifest(_manifest(format_version=1))
    with pytest.raises(ExportInvalid, match="latent_layout 'FCH' does not name"):
        Manifest(_manifest(latent_layout="FCH"))
    with pytest.raises(ExportInvalid, match="malformed"):
        Manifest(_manifest(graphs={"unet": {"file": "unet.mindir"}}))


@pytest.mark.parametrize("path", ["../outside.mindir", "/etc/passwd", "sub/../../x.mindir"])
def test_manifest_paths_outside_the_export_are_refused(tmp_path, path):
    root = tmp_path / "export"
    root.mkdir()
    (tmp_path / "outside.mindir").write_bytes(b"x")
    raw = _manifest(files={path: "0" * 64})
    raw["graphs"]["unet"].update(file=path, files=[path])
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ExportInvalid, match="outside the export"):
        verify_export(root)


def test_an_edited_graph_input_shape_is_refused_before_the_graph_runs(tmp_path):
    import mindspore as ms
    from mindspore import nn

    class Twice(nn.Cell):
        def construct(self, x):
            return x * 2

    ms.export(Twice(), ms.Tensor(np.zeros((2, 3), np.float32)), file_name=str(tmp_path / "g"), file_format="MINDIR")
    assert mindir_input_shapes(tmp_path / "g.mindir") == [(2, 3)]

    from video_aot.runtime.base import ExportedPipeline
    from video_aot.runtime.backends import MindSporeBackend
    from video_aot.runtime.manifest import Export

    raw = _manifest(files={"g.mindir": sha256_file(tmp_path / "g.mindir")})
    raw["graphs"] = {"g": {"file": "g.mindir", "files": ["g.mindir"],
                           "inputs": [{"name": "x", "shape": [4, 3], "dtype": "float32"}], "outputs": []}}

    class Pipe(ExportedPipeline):
        graph_names = ("g",)

    with pytest.raises(ExportInvalid, match=r"declares graph g's inputs as \[\(4, 3\)\] but g.mindir was traced "
                                            r"with \[\(2, 3\)\]"):
        Pipe(Export(tmp_path, Manifest(raw)), MindSporeBackend())
    raw["graphs"]["g"]["inputs"][0]["shape"] = [2, 3]
    pipe = Pipe(Export(tmp_path, Manifest(raw)), MindSporeBackend())
    assert np.array_equal(pipe.graphs["g"](x=np.ones((2, 3)))[0], np.full((2, 3), 2.0))


def test_run_chunks_and_run_causal():
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    calls = []
    out = run_chunks(lambda part, tail: (calls.append((len(part), tail)) or (part + 1, part * 0)), x, 3)
    assert calls == [(3, False), (3, False), (1, True)] and np.array_equal(out[0], x + 1) and out[1].shape == x.shape
    with pytest.raises(ValueError, match="chunk must be positive"):
        run_chunks(lambda p, t: p, x, 0)
    video = np.arange(1 * 1 * 5 * 2 * 2, dtype=np.float32).reshape(1, 1, 5, 2, 2)
    batches = [{"start": 0, "end": 1}, {"start": 1, "end": 3}, {"start": 3, "end": 5}]
    seen = []

    def following(part, cache):
        seen.append(float(cache))
        return part, cache + 1

    out = run_causal(lambda part: (part, np.float32(10)), following, video, batches)
    assert np.array_equal(out, video) and seen == [10.0, 11.0]


@pytest.mark.parametrize("latent_frames,tile,stride", [(9, 16, 12), (13, 16, 12), (4, 16, 12), (11, 8, 4)])
def test_temporal_tiles_match_diffusers_framewise_decode(latent_frames, tile, stride):
    """diffusers' AutoencoderKLHunyuanVideo._temporal_tiled_decode around a stand-in decoder (each
    latent frame becomes `ratio` frames, the first only one, as a causal video decoder does)."""
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKLHunyuanVideo

    ratio = 4

    def fake_decode(z):  # [B, C, F, h, w] -> [B, 3, (F - 1) * ratio + 1, h, w], position-dependent
        z = np.asarray(z)
        frames = np.concatenate([z[:, :, :1], np.repeat(z[:, :, 1:], ratio, axis=2)], 2)
        return np.concatenate([frames, frames * 0.5, frames + 1.0], 1)[:, :3] * np.linspace(
            0.5, 1.5, frames.shape[2], dtype=np.float32)[None, None, :, None, None]

    vae = AutoencoderKLHunyuanVideo(block_out_channels=(8, 8), down_block_types=("HunyuanVideoDownBlock3D",) * 2,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 2, layers_per_block=1,
                                    norm_num_groups=4, latent_channels=4)
    vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = tile, stride
    vae.temporal_compression_ratio = ratio
    vae.use_tiling = False
    vae.post_quant_conv = torch.nn.Identity()
    class StandIn(torch.nn.Module):
        def forward(self, t):
            return torch.from_numpy(fake_decode(t.numpy()).astype(np.float32))

    vae.decoder = StandIn()
    z = np.random.default_rng(0).standard_normal((1, 4, latent_frames, 2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = vae._temporal_tiled_decode(torch.from_numpy(z)).sample.numpy()
    ours = temporal_tiles(z, fake_decode, tile, stride, ratio)
    assert ours.shape == ref.shape == (1, 3, (latent_frames - 1) * ratio + 1, 2, 3)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert {e - s for s, e in temporal_tile_starts(latent_frames, tile, stride, ratio)} <= {tile // ratio + 1} | set(
        range(1, tile // ratio + 1))


@pytest.mark.parametrize("latent_frames,height,width", [(5, 6, 7), (3, 3, 4), (2, 6, 3)])
def test_ltx_temporal_and_spatial_tiles_match_diffusers(latent_frames, height, width):
    """diffusers' AutoencoderKLLTXVideo._decode with enable_tiling() and use_framewise_decoding around a
    stand-in decoder (position-dependent, so every overlap blends two different tiles): temporal tiles
    lose their last decoded frame (HunyuanVideo's lose their first); the shapes decode_tile_shapes lists
    are the ones decoded."""
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKLLTXVideo

    spatial, temporal = 2, 4
    tiling = dict(tile_sample_min_height=6, tile_sample_min_width=4, tile_sample_min_num_frames=8,
                  tile_sample_stride_height=4, tile_sample_stride_width=2, tile_sample_stride_num_frames=4)

    def fake_decode(z):  # [B, C, F, h, w] -> [B, 3, (F - 1) * 4 + 1, 2h, 2w]
        z = np.asarray(z, np.float32)
        frames = np.concatenate([z[:, :, :1], np.repeat(z[:, :, 1:], temporal, axis=2)], 2)
        x = np.repeat(np.repeat(frames[:, :3], spatial, axis=3), spatial, axis=4)
        ramp = [np.linspace(0.5, 1.5, n, dtype=np.float32) for n in x.shape[2:]]
        return np.tanh(x) * ramp[0][:, None, None] * ramp[1][:, None] + ramp[2]

    class StandIn(torch.nn.Module):
        def forward(self, z, temb=None):
            assert temb is not None and float(temb[0]) == 0.25
            return torch.from_numpy(fake_decode(z.numpy()))

    vae = AutoencoderKLLTXVideo(block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                                spatio_temporal_scaling=(True, False), decoder_spatio_temporal_scaling=(True, False),
                                decoder_inject_noise=(False, False, False), upsample_residual=(False, False),
                                upsample_factor=(1, 1), latent_channels=4)
    vae.spatial_compression_ratio, vae.temporal_compression_ratio = spatial, temporal
    vae.decoder = StandIn()
    vae.enable_tiling(**tiling)
    vae.use_framewise_decoding = True
    z = np.random.default_rng(1).standard_normal((1, 4, latent_frames, height, width)).astype(np.float32)
    seen = set()

    def decode(tile):
        seen.add(tile.shape[2:])
        return fake_decode(tile)

    with torch.no_grad():
        ref = vae._decode(torch.from_numpy(z), torch.tensor([0.25])).sample.numpy()
    ours = framewise_decode(z, decode, tiling, spatial, temporal, use_tiling=True, drop_frame="last")
    assert ours.shape == ref.shape == (1, 3, (latent_frames - 1) * temporal + 1, height * spatial, width * spatial)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert sorted(seen) == decode_tile_shapes(latent_frames, height, width, tiling, spatial, temporal,
                                              use_tiling=True)
    assert len(seen) > 1
    with pytest.raises(ValueError, match="drop_frame"):
        temporal_tiles(z, decode, 8, 4, temporal, drop_frame="middle")
