"""Image preprocessing and video postprocessing in numpy + Pillow, matching diffusers exactly.

Each function mirrors one diffusers code path:

* ``load_image``: ``VaeImageProcessor.pil_to_numpy`` (HWC float32 in [0, 1]).
* ``resize_with_antialiasing``: ``_resize_with_antialiasing`` from the Stable Video Diffusion
  pipeline. That is a Gaussian blur (reflect padding), then torch's bicubic interpolation with
  ``align_corners=True``.
* ``clip_image_inputs``: ``StableVideoDiffusionPipeline._encode_image`` up to the image encoder.
* ``vae_image_inputs``: ``VaeImageProcessor.preprocess(image, height=, width=)`` with the default
  config (resize with PIL Lanczos for PIL inputs, torch "nearest" for float arrays, then map to
  [-1, 1]).
* ``postprocess_video``: ``VideoProcessor.postprocess_video``.

No torch here: the runtime runs on numpy only.

Every input image is refused above ``MAX_IMAGE_PIXELS`` (width * height; 4096 * 4096 by default,
as serve-model's ``--max-image-pixels``). An image file is checked from its header, before any
pixel is decoded. Raise the cap in code with ``video_aot.runtime.image.MAX_IMAGE_PIXELS = N``
(``None`` turns it off), or for any process, generate-video included, with the environment
variable ``VIDEO_AOT_MAX_IMAGE_PIXELS``. Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, 89 Mpx,
refusing at twice that) still applies above it.
"""

from __future__ import annotations

import os
from typing import Any, List, Mapping, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "OUTPUT_TYPES",
    "MAX_IMAGE_PIXELS",
    "ImageTooLarge",
    "check_image_size",
    "open_image",
    "load_image",
    "resize_with_antialiasing",
    "gaussian_blur2d",
    "bicubic_resize_align_corners",
    "nearest_resize",
    "clip_image_inputs",
    "vae_image_inputs",
    "postprocess_video",
]

F32 = np.float32

# transformers' CLIPImageProcessor defaults, used when a feature-extractor config omits them.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

OUTPUT_TYPES = ("np", "pil", "uint8")

ImageInput = Union[PIL.Image.Image, np.ndarray, str, os.PathLike]

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096


def _max_pixels_from_env():
    raw = os.environ.get("VIDEO_AOT_MAX_IMAGE_PIXELS")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_IMAGE_PIXELS
    if raw.strip().lower() in ("none", "0", "off"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"VIDEO_AOT_MAX_IMAGE_PIXELS={raw!r} is not a whole number of pixels "
                         "(or 'none' for no cap)") from None
    if value < 0:
        raise ValueError(f"VIDEO_AOT_MAX_IMAGE_PIXELS={raw!r} must be positive (or 'none' for no cap)")
    return value


# width * height above which an input image is refused; None: no cap. See the module docstring.
MAX_IMAGE_PIXELS = _max_pixels_from_env()


class ImageTooLarge(ValueError):
    """An input image above MAX_IMAGE_PIXELS (or above Pillow's decompression-bomb guard)."""


def check_image_size(width: int, height: int, what: str = "image") -> None:
    """Refuse an image of more than MAX_IMAGE_PIXELS pixels, saying how to raise the cap."""
    cap = MAX_IMAGE_PIXELS
    if cap is not None and width * height > cap:
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of {cap} "
            f"(video_aot.runtime.image.MAX_IMAGE_PIXELS). The pipeline resizes it to the exported size anyway: "
            f"downscale it first, or raise the limit with video_aot.runtime.image.MAX_IMAGE_PIXELS = N or the "
            f"environment variable VIDEO_AOT_MAX_IMAGE_PIXELS=N.")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _check_hwc3(array: np.ndarray, what: str = "image") -> None:
    if array.ndim != 3 or array.shape[-1] != 3:
        hint = ""
        if array.ndim == 2:
            hint = " It looks grayscale: stack it to 3 channels, e.g. np.stack([a] * 3, axis=-1)."
        elif array.ndim == 3 and array.shape[-1] == 4:
            hint = " It has an alpha channel: drop it (a[..., :3]) or composite it first."
        elif array.ndim == 3 and array.shape[0] == 3:
            hint = " It looks channels-first (CHW): transpose it to HWC."
        raise ValueError(f"Expected an RGB {what} of shape (height, width, 3), got shape {array.shape}.{hint}")


def open_image(image: ImageInput) -> PIL.Image.Image:
    """Return an RGB PIL image.

    * A path is opened, EXIF-rotated and converted to RGB, like ``diffusers.utils.load_image``.
    * A PIL image is used as given (diffusers pipelines do not EXIF-rotate it). It is converted to
      RGB if it is in another mode.
    * A uint8 numpy array of shape (H, W, 3) is wrapped as is.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such image file: {path!r}")
        try:
            with PIL.Image.open(path) as opened:  # reads the header only
                check_image_size(*opened.size, what=f"image file {path!r}")
                pil = PIL.ImageOps.exif_transpose(opened)
                pil = pil.convert("RGB")
        except PIL.UnidentifiedImageError as err:
            raise ValueError(f"Could not read {path!r} as an image: {err}") from None
        except PIL.Image.DecompressionBombError as err:
            raise ImageTooLarge(f"image file {path!r} is too large for Pillow to open: {err} "
                                "(PIL.Image.MAX_IMAGE_PIXELS sets Pillow's own limit)") from None
        return pil
    if isinstance(image, PIL.Image.Image):
        check_image_size(*image.size)
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        _check_hwc3(image)
        check_image_size(image.shape[1], image.shape[0], what="image array")
        if image.dtype != np.uint8:
            raise ValueError(f"Only uint8 arrays can be turned into a PIL image, got dtype {image.dtype}. "
                             "Float images in [0, 1] are accepted by load_image / vae_image_inputs directly.")
        return PIL.Image.fromarray(image)
    raise TypeError(f"Unsupported image type {type(image).__name__}; expected a PIL.Image.Image, "
                    "a numpy array (H, W, 3) uint8 or float in [0, 1], or a path to an image file.")


def load_image(image: ImageInput) -> np.ndarray:
    """Image -> float32 array (H, W, 3) in [0, 1].

    uint8 data (a PIL image, a file or a uint8 array) becomes ``x.astype(float32) / 255``, exactly
    like diffusers' ``pil_to_numpy``. Float arrays must already be in [0, 1] and are only cast.
    """
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        _check_hwc3(image)
        check_image_size(image.shape[1], image.shape[0], what="image array")
        if not np.all(np.isfinite(image)):
            raise ValueError("Image contains NaN or inf values.")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"Float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]. "
                             "For uint8 data pass the uint8 array; for [-1, 1] data use (x + 1) / 2.")
        return image.astype(np.float32)
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        raise ValueError(f"Image arrays must be uint8 or float in [0, 1], got dtype {image.dtype}.")
    pil = open_image(image)
    return np.array(pil).astype(np.float32) / F32(255.0)


def as_image_list(images: Any) -> list:
    """One image, a list/tuple of images, or a 4-D (N, H, W, 3) array -> list of single images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("Got an empty list of images.")
        return list(images)
    return [images]


# ----------------------------------------------------------------------------------------------
# SVD's anti-aliased resize (numpy port of diffusers' _resize_with_antialiasing)
# ----------------------------------------------------------------------------------------------


def _gaussian_kernel(window_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, computed in float32 like the torch version."""
    sigma = F32(sigma)
    x = np.arange(window_size, dtype=np.float32) - F32(window_size // 2)
    if window_size % 2 == 0:
        x = x + F32(0.5)
    gauss = np.exp((-(x * x) / (F32(2) * (sigma * sigma))).astype(np.float64)).astype(np.float32)
    return gauss / gauss.sum(dtype=np.float32)


def _filter_1d_reflect(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Cross-correlate along ``axis`` with reflect padding (torch.nn.functional.pad mode="reflect")."""
    k = len(kernel)
    n = x.shape[axis]
    front = (k - 1) // 2
    rear = (k - 1) - front
    if max(front, rear) >= n:
        raise ValueError(f"Image too small for the anti-aliasing blur: {n} pixels along an axis, kernel size {k} "
                         "(reflect padding needs more pixels than half the kernel).")
    pad = [(0, 0)] * x.ndim
    pad[axis] = (front, rear)
    padded = np.pad(x, pad, mode="reflect")
    out = np.zeros_like(x, dtype=np.float32)
    for j in range(k):
        out += kernel[j] * np.take(padded, np.arange(j, j + n), axis=axis)
    return out


def gaussian_blur2d(x: np.ndarray, kernel_size: Tuple[int, int], sigma: Tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur of NCHW float32 ``x``: first along width, then height."""
    ky, kx = int(kernel_size[0]), int(kernel_size[1])
    out = _filter_1d_reflect(x, _gaussian_kernel(kx, sigma[1]), axis=3)
    return _filter_1d_reflect(out, _gaussian_kernel(ky, sigma[0]), axis=2)


def _cubic_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (4, out) and weights (4, out) of torch's bicubic (A = -0.75), align_corners=True."""
    scale = F32(in_size - 1) / F32(out_size - 1) if out_size > 1 else F32(0)
    real = scale * np.arange(out_size, dtype=np.float32)
    idx = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    t = np.clip(real - idx.astype(np.float32), F32(0), F32(1))
    A = F32(-0.75)

    def conv1(v):  # |v| <= 1
        return ((A + F32(2)) * v - (A + F32(3))) * v * v + F32(1)

    def conv2(v):  # 1 < |v| < 2
        return ((A * v - F32(5) * A) * v + F32(8) * A) * v - F32(4) * A

    weights = np.stack([conv2(t + F32(1)), conv1(t), conv1(F32(1) - t), conv2((F32(1) - t) + F32(1))])
    indices = np.stack([np.clip(idx - 1 + j, 0, in_size - 1) for j in range(4)])
    return indices, weights.astype(np.float32)


def bicubic_resize_align_corners(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size, mode="bicubic", align_corners=True)`` for NCHW."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[-2:]
    ix, wx = _cubic_taps(in_w, out_w)
    iy, wy = _cubic_taps(in_h, out_h)
    rows = x[..., ix[0]] * wx[0]
    for j in range(1, 4):
        rows = rows + x[..., ix[j]] * wx[j]
    out = rows[..., iy[0], :] * wy[0][:, None]
    for j in range(1, 4):
        out = out + rows[..., iy[j], :] * wy[j][:, None]
    return out.astype(np.float32, copy=False)


def resize_with_antialiasing(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Numpy port of diffusers' SVD ``_resize_with_antialiasing`` for NCHW float32 ``x``.

    The sigma and kernel size are skimage's, as diffusers uses them. A Gaussian blur (reflect
    padding) is followed by bicubic interpolation with align_corners=True.
    """
    x = np.asarray(x)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"resize_with_antialiasing expects a float NCHW array, got shape {x.shape} dtype {x.dtype}.")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}.")
    x = x.astype(np.float32, copy=False)
    h, w = x.shape[-2:]
    factors = (h / size[0], w / size[1])
    sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(2.0 * 2 * sigmas[0], 3)), int(max(2.0 * 2 * sigmas[1], 3))]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]  # odd kernels
    blurred = gaussian_blur2d(x, (ks[0], ks[1]), sigmas)
    return bicubic_resize_align_corners(blurred, size)


# ----------------------------------------------------------------------------------------------
# Encoder inputs
# ----------------------------------------------------------------------------------------------


def clip_image_inputs(
    images: Union[ImageInput, Sequence[ImageInput]],
    feature_extractor_config: Mapping[str, Any],
    size: Tuple[int, int] = (224, 224),
) -> np.ndarray:
    """CLIP image-encoder input (N, 3, 224, 224) float32, as SVD's ``_encode_image`` prepares it.

    pil_to_numpy -> NCHW -> x * 2 - 1 -> resize_with_antialiasing(224, 224) -> (x + 1) / 2
    -> CLIP normalisation (x - image_mean) / image_std, per channel.

    Float arrays are taken to be in [0, 1]. (For a numpy input, diffusers' ``pil_to_numpy`` would
    divide by 255 a second time.)

    ``feature_extractor_config`` is the snapshot's ``feature_extractor/preprocessor_config.json``.
    Only ``image_mean`` and ``image_std`` are read, and missing entries fall back to the CLIP
    defaults, as in ``CLIPImageProcessor``. The pipeline itself turns resize, crop and rescale
    off. transformers' CLIPImageProcessor is not called here. In transformers 5 it is the
    torchvision backend, which needs torch, and its PIL fallback pulls in transformers just to run
    ``(x - mean) / std`` in float32. This numpy line computes that same expression.
    """
    batch = np.stack([load_image(im) for im in as_image_list(images)])  # N, H, W, 3
    x = batch.transpose(0, 3, 1, 2)  # N, 3, H, W
    x = x * F32(2.0) - F32(1.0)
    x = resize_with_antialiasing(x, size)
    x = (x + F32(1.0)) / F32(2.0)

    mean = np.asarray(feature_extractor_config.get("image_mean", OPENAI_CLIP_MEAN), dtype=np.float32)
    std = np.asarray(feature_extractor_config.get("image_std", OPENAI_CLIP_STD), dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"image_mean / image_std must have 3 entries, got {mean.tolist()} / {std.tolist()}.")
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32, copy=False)


def nearest_resize(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size)`` (mode "nearest") for NCHW arrays."""

    def src_index(in_size: int, out_size: int) -> np.ndarray:
        if out_size == in_size:
            return np.arange(out_size)
        if out_size == 2 * in_size:
            return np.arange(out_size) >> 1
        scale = F32(in_size) / F32(out_size)
        idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, in_size - 1)

    iy = src_index(x.shape[2], int(size[0]))
    ix = src_index(x.shape[3], int(size[1]))
    return x[:, :, iy][:, :, :, ix]


def vae_image_inputs(
    images: Union[ImageInput, Sequence[ImageInput]],
    height: int,
    width: int,
    vae_scale_factor: int = 8,
) -> np.ndarray:
    """VAE encoder input (N, 3, height, width) float32 in [-1, 1].

    This is ``VideoProcessor(do_resize=True, vae_scale_factor=8).preprocess(image, height, width)``,
    which is what StableVideoDiffusionPipeline calls:

    * PIL images, image files and uint8 arrays: ``PIL.Image.resize((width, height), LANCZOS)``
      (a no-op at the same size), then ``/ 255``.
    * float arrays in [0, 1], shaped (H, W, 3) or (N, H, W, 3): torch's "nearest" resize.
    * Then ``2 * x - 1``.

    diffusers silently rounds height/width down to a multiple of vae_scale_factor. Here such a
    size is an error instead, as the SVD pipeline's own input check makes it.
    """
    if height % vae_scale_factor or width % vae_scale_factor or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of vae_scale_factor={vae_scale_factor}, "
                         f"got {height}x{width}.")
    items = as_image_list(images)
    is_float = [isinstance(im, np.ndarray) and np.issubdtype(im.dtype, np.floating) for im in items]
    if any(is_float) and not all(is_float):
        raise ValueError("Do not mix float arrays with PIL images / uint8 data in one batch; diffusers "
                         "resizes them differently (nearest vs Lanczos).")
    if all(is_float):
        batch = np.stack([load_image(im) for im in items]).transpose(0, 3, 1, 2)  # N, 3, H, W
        batch = nearest_resize(batch, (height, width))
    else:
        resized = []
        for im in items:
            pil = open_image(im)
            pil = pil.resize((width, height), resample=PIL.Image.Resampling.LANCZOS, reducing_gap=None)
            resized.append(np.array(pil).astype(np.float32) / F32(255.0))
        batch = np.stack(resized).transpose(0, 3, 1, 2)
    return (F32(2.0) * batch - F32(1.0)).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Postprocessing
# ----------------------------------------------------------------------------------------------


def postprocess_video(frames: np.ndarray, output_type: str = "np") -> Union[np.ndarray, List[List[PIL.Image.Image]]]:
    """Decoded video (batch, 3, frames, H, W) in [-1, 1] -> viewable frames.

    "np":    float32 (batch, frames, H, W, 3) in [0, 1]: (x * 0.5 + 0.5).clip(0, 1), channels last.
             This equals ``VideoProcessor.postprocess_video(output_type="np")``.
    "uint8": uint8 of the same layout, rounded like diffusers' numpy_to_pil: (x * 255).round().
    "pil":   one list of PIL images per batch entry.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported. Choose one of: {', '.join(OUTPUT_TYPES)}.")
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"Expected decoded video frames shaped (batch, 3, frames, height, width), got {frames.shape}.")
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"Expected floating-point VAE output in [-1, 1], got dtype {frames.dtype}.")
    x = frames.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("Decoded frames contain NaN or inf (often a float16 overflow in the VAE decoder).")
    x = np.clip(x * F32(0.5) + F32(0.5), F32(0), F32(1))
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))  # batch, frames, H, W, 3
    if output_type == "np":
        return x
    as_uint8 = (x * F32(255)).round().astype(np.uint8)
    if output_type == "uint8":
        return as_uint8
    return [[PIL.Image.fromarray(frame) for frame in video] for video in as_uint8]
