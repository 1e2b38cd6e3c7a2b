"""Parity of runtime/image.py with diffusers' VideoProcessor, SVD's _resize_with_antialiasing and
SVD's _encode_image, whose feature extractor is transformers' CLIPImageProcessor. Every reference
value is computed by those implementations from the same random inputs."""

from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import StableVideoDiffusionPipeline  # noqa: E402
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (  # noqa: E402
    _resize_with_antialiasing,
)
from diffusers.utils import load_image as diffusers_load_image  # noqa: E402
from diffusers.video_processor import VideoProcessor  # noqa: E402

from video_aot.runtime import image as I  # noqa: E402

# stabilityai/stable-video-diffusion-img2vid(-xt) feature_extractor/preprocessor_config.json
SVD_FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def random_pil(rng, height, width):
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def svd_video_processor():
    return VideoProcessor(do_resize=True, vae_scale_factor=8)  # as StableVideoDiffusionPipeline builds it


# ---------------------------------------------------------------------------------------------- load_image


def test_load_image_matches_pil_to_numpy(tmp_path):
    rng = np.random.default_rng(0)
    pil = random_pil(rng, 37, 53)
    ref = VideoProcessor.pil_to_numpy(pil)[0]
    np.testing.assert_array_equal(I.load_image(pil), ref)
    np.testing.assert_array_equal(I.load_image(np.array(pil)), ref)
    assert I.load_image(pil).dtype == np.float32 and I.load_image(pil).shape == (37, 53, 3)

    path = tmp_path / "img.png"
    pil.save(path)
    from_file = VideoProcessor.pil_to_numpy(diffusers_load_image(str(path)))[0]
    np.testing.assert_array_equal(I.load_image(path), from_file)
    np.testing.assert_array_equal(I.load_image(str(path)), from_file)

    floats = rng.random((5, 6, 3))
    np.testing.assert_array_equal(I.load_image(floats), floats.astype(np.float32))
    # Non-RGB PIL images are converted like diffusers.utils.load_image does
    rgba = pil.convert("RGBA")
    np.testing.assert_array_equal(I.load_image(rgba), ref)


def test_load_image_errors_teach(tmp_path):
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        I.load_image([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="grayscale"):
        I.load_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        I.load_image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="channels-first"):
        I.load_image(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        I.load_image(np.full((4, 4, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="uint8 or float"):
        I.load_image(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        I.load_image(tmp_path / "missing.png")
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="Could not read"):
        I.load_image(bad)


# ------------------------------------------------------------------------------ resize_with_antialiasing


@pytest.mark.parametrize(
    "shape,size",
    [
        ((1, 3, 576, 1024), (224, 224)),  # SVD default resolution, downscale
        ((2, 3, 300, 200), (64, 48)),     # non-square downscale, batch of 2
        ((1, 3, 57, 91), (30, 20)),       # odd sizes
        ((1, 3, 96, 160), (224, 224)),    # upscale
        ((1, 4, 20, 30), (45, 17)),       # mixed up/down, 4 channels
        ((1, 3, 224, 224), (224, 224)),   # identity size
    ],
)
def test_resize_with_antialiasing_matches_torch(shape, size):
    x = np.random.default_rng(sum(shape)).uniform(-1, 1, shape).astype(np.float32)
    ref = _resize_with_antialiasing(torch.from_numpy(x), size).numpy()
    ours = I.resize_with_antialiasing(x, size)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


def test_resize_with_antialiasing_errors():
    with pytest.raises(ValueError, match="NCHW"):
        I.resize_with_antialiasing(np.zeros((3, 8, 8), np.float32), (4, 4))
    with pytest.raises(ValueError, match="too small"):
        I.resize_with_antialiasing(np.zeros((1, 3, 1, 8), np.float32), (1, 4))  # torch fails here too


# ------------------------------------------------------------------------------------- clip_image_inputs


class _CapturingEncoder(torch.nn.Module):
    """Stands in for the CLIP vision model and records the tensor SVD's _encode_image feeds it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def forward(self, pixel_values):
        self.seen = pixel_values.detach().clone()
        return SimpleNamespace(image_embeds=torch.zeros(pixel_values.shape[0], 8))


def svd_encoder_input(image, feature_extractor_config):
    from transformers import CLIPImageProcessor

    config = {k: v for k, v in feature_extractor_config.items() if not k.endswith("_type")}
    encoder = _CapturingEncoder()
    fake_pipe = SimpleNamespace(image_encoder=encoder, video_processor=svd_video_processor(),
                                feature_extractor=CLIPImageProcessor(**config))
    StableVideoDiffusionPipeline._encode_image(fake_pipe, image, "cpu", 1, False)
    return encoder.seen.numpy()


@pytest.mark.parametrize("height,width", [(576, 1024), (320, 256), (100, 150)])
def test_clip_image_inputs_match_svd_encode_image(height, width):
    pil = random_pil(np.random.default_rng(height), height, width)
    ref = svd_encoder_input(pil, SVD_FEATURE_EXTRACTOR)
    ours = I.clip_image_inputs(pil, SVD_FEATURE_EXTRACTOR)
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


def test_clip_image_inputs_uses_config_mean_std_and_batches():
    rng = np.random.default_rng(5)
    pils = [random_pil(rng, 64, 96) for _ in range(2)]
    config = dict(SVD_FEATURE_EXTRACTOR, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    ref = svd_encoder_input(pils, config)
    ours = I.clip_image_inputs(pils, config)
    assert ours.shape == (2, 3, 224, 224)
    assert np.abs(ours - ref).max() <= 1e-5
    # a uint8 NHWC batch is the same data
    ours_array = I.clip_image_inputs(np.stack([np.array(p) for p in pils]), config)
    np.testing.assert_array_equal(ours_array, ours)
    # defaults (no mean/std in the config) are CLIP's, as CLIPImageProcessor's
    no_stats = {k: v for k, v in SVD_FEATURE_EXTRACTOR.items() if k not in ("image_mean", "image_std")}
    np.testing.assert_array_equal(I.clip_image_inputs(pils, no_stats), I.clip_image_inputs(pils, SVD_FEATURE_EXTRACTOR))


# -------------------------------------------------------------------------------------- vae_image_inputs


@pytest.mark.parametrize(
    "src,dst",
    [((576, 1024), (576, 1024)), ((600, 1000), (576, 1024)), ((333, 517), (256, 320)), ((100, 80), (128, 96))],
)
def test_vae_image_inputs_pil_matches_video_processor(src, dst):
    rng = np.random.default_rng(src[0])
    pil = random_pil(rng, *src)
    ref = svd_video_processor().preprocess(pil, height=dst[0], width=dst[1]).numpy()
    ours = I.vae_image_inputs(pil, dst[0], dst[1])
    assert ours.shape == ref.shape == (1, 3, *dst) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    # uint8 arrays take the same (PIL, Lanczos) route
    np.testing.assert_array_equal(I.vae_image_inputs(np.array(pil), dst[0], dst[1]), ref)


def test_vae_image_inputs_batches_and_float_arrays():
    rng = np.random.default_rng(9)
    pils = [random_pil(rng, 70, 90) for _ in range(3)]
    ref = svd_video_processor().preprocess(pils, height=64, width=96).numpy()
    np.testing.assert_array_equal(I.vae_image_inputs(pils, 64, 96), ref)

    for shape, dst in [((2, 40, 56, 3), (40, 56)), ((2, 37, 51, 3), (64, 48)), ((1, 100, 120, 3), (32, 40))]:
        floats = rng.random(shape).astype(np.float32)
        ref = svd_video_processor().preprocess(floats, height=dst[0], width=dst[1]).numpy()
        np.testing.assert_array_equal(I.vae_image_inputs(floats, *dst), ref)
        single = svd_video_processor().preprocess(floats[0], height=dst[0], width=dst[1]).numpy()
        np.testing.assert_array_equal(I.vae_image_inputs(floats[0], *dst), single)


def test_vae_image_inputs_errors_teach():
    pil = random_pil(np.random.default_rng(0), 16, 16)
    with pytest.raises(ValueError, match="multiples of vae_scale_factor=8"):
        I.vae_image_inputs(pil, 100, 64)
    with pytest.raises(ValueError, match="mix"):
        I.vae_image_inputs([pil, np.zeros((16, 16, 3), np.float32)], 16, 16)


# ------------------------------------------------------------------------------------- postprocess_video


def test_postprocess_video_matches_video_processor():
    rng = np.random.default_rng(1)
    frames = rng.uniform(-1.2, 1.2, (2, 3, 4, 10, 14)).astype(np.float32)  # beyond [-1, 1] to hit the clamp
    processor = svd_video_processor()

    ref_np = processor.postprocess_video(torch.from_numpy(frames), output_type="np")
    ours_np = I.postprocess_video(frames, "np")
    assert ours_np.shape == (2, 4, 10, 14, 3) and ours_np.dtype == np.float32
    np.testing.assert_array_equal(ours_np, ref_np)

    ref_pil = processor.postprocess_video(torch.from_numpy(frames), output_type="pil")
    ours_pil = I.postprocess_video(frames, "pil")
    assert len(ours_pil) == 2 and all(len(v) == 4 for v in ours_pil)
    for video_ours, video_ref in zip(ours_pil, ref_pil):
        for a, b in zip(video_ours, video_ref):
            assert a.mode == b.mode == "RGB" and a.size == b.size == (14, 10)
            np.testing.assert_array_equal(np.array(a), np.array(b))

    ours_u8 = I.postprocess_video(frames, "uint8")
    assert ours_u8.dtype == np.uint8 and ours_u8.shape == (2, 4, 10, 14, 3)
    np.testing.assert_array_equal(ours_u8, np.stack([np.stack([np.array(f) for f in v]) for v in ref_pil]))


def test_postprocess_video_errors_teach():
    frames = np.zeros((1, 3, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="np, pil, uint8"):
        I.postprocess_video(frames, "pt")
    with pytest.raises(ValueError, match=r"\(batch, 3, frames, height, width\)"):
        I.postprocess_video(frames[0], "np")
    with pytest.raises(ValueError, match="NaN"):
        I.postprocess_video(np.full((1, 3, 1, 2, 2), np.nan, np.float32), "np")


# ----------------------------------------------------------------------------------------------
# The pixel cap (issue 16.4 and 16.5)
# ----------------------------------------------------------------------------------------------


def _write_blank_png(path, width, height):
    """A valid 1-bit PNG of any size, streamed (a 9400x9400 one is ~11 KB and costs no memory)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_pixel_cap_refuses_a_large_file_from_its_header(tmp_path):
    """A 9400x9400 PNG of ~11 KB (88 Mpx: 171 s and 7.8 GB in generate-video before) is refused
    before a pixel is decoded; the message names the file and how to raise the cap."""
    import time

    path = _write_blank_png(tmp_path / "huge.png", 9400, 9400)
    assert path.stat().st_size < 20_000
    start = time.perf_counter()
    for call in (I.open_image, I.load_image, lambda p: I.vae_image_inputs(p, 64, 64),
                 lambda p: I.clip_image_inputs(p, SVD_FEATURE_EXTRACTOR)):
        with pytest.raises(ValueError, match=r"huge\.png.*9400x9400 = 88360000 pixels.*MAX_IMAGE_PIXELS"):
            call(str(path))
    assert time.perf_counter() - start < 1.0


def test_pixel_cap_can_be_raised(tmp_path, monkeypatch):
    assert I.MAX_IMAGE_PIXELS == 4096 * 4096  # the server's --max-image-pixels default
    path = _write_blank_png(tmp_path / "small.png", 20, 10)
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", 199)
    for image in (str(path), PIL.Image.new("RGB", (20, 10)), np.zeros((10, 20, 3), np.uint8),
                  np.zeros((10, 20, 3), np.float32)):
        with pytest.raises(I.ImageTooLarge, match="20x10 = 200 pixels, above the limit of 199"):
            I.load_image(image)
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", 200)
    assert I.load_image(str(path)).shape == (10, 20, 3)
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", None)  # no cap
    assert I.load_image(np.zeros((10, 20, 3), np.uint8)).shape == (10, 20, 3)
    # the environment variable sets the default of a process (generate-video has no flag for it)
    for raw, value in (("50000000", 50_000_000), ("none", None), ("", 4096 * 4096)):
        monkeypatch.setenv("VIDEO_AOT_MAX_IMAGE_PIXELS", raw)
        assert I._max_pixels_from_env() == value
    monkeypatch.setenv("VIDEO_AOT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="VIDEO_AOT_MAX_IMAGE_PIXELS='lots'"):
        I._max_pixels_from_env()


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    """Past Pillow's own guard (DecompressionBombError, a traceback before) the error names the file."""
    path = _write_blank_png(tmp_path / "bomb.png", 40, 40)
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", None, raising=False)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # refuses above 2 * 100 pixels
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        I.load_image(str(path))
