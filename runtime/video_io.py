"""Write and read short videos (.mp4 and .gif) through the ffmpeg binary that imageio-ffmpeg ships.

* .mp4: H.264 (libx264), yuv420p, constant quality (``crf``). yuv420p needs even width and height.
  An odd size is padded by one replicated row or column at the bottom or right edge, with a
  warning. The padding is never silent, and the frame count is never changed.
* .gif: also written by ffmpeg, with one palette computed over the whole clip
  (palettegen/paletteuse). Pillow is not used because its GIF writer merges identical
  consecutive frames, which would change the frame count a reader sees.

Files are written atomically: first to a temporary file in the destination folder, then moved
into place with ``os.replace``. A crash never leaves a half-written video under the final name.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Tuple, Union

import numpy as np

__all__ = ["SUPPORTED_EXTENSIONS", "write_video", "read_video"]

SUPPORTED_EXTENSIONS = (".gif", ".mp4")

PathLike = Union[str, os.PathLike]


def _imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - declared dependency
        raise ImportError("Video I/O needs the 'imageio-ffmpeg' package (pip install imageio-ffmpeg).") from err
    return imageio_ffmpeg


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(f"Unsupported video extension {path.suffix!r} for {str(path)!r}. "
                         f"Supported: {', '.join(SUPPORTED_EXTENSIONS)}.")
    return ext


def _frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3), or float in [0, 1] rounded like diffusers' numpy_to_pil: (x * 255).round()."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected frames shaped (frames, height, width, 3), got {frames.shape}. "
                         "For postprocess_video output pick one batch entry: frames[0].")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"Cannot write an empty video, got frames shaped {frames.shape}.")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"Frames must be uint8 or float in [0, 1], got dtype {frames.dtype}.")
    if not np.all(np.isfinite(frames)):
        raise ValueError("Frames contain NaN or inf values.")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"Float frames must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}].")
    return (frames.astype(np.float32) * np.float32(255)).round().astype(np.uint8)


def _pad_to_even(frames: np.ndarray, path: Path) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if not (pad_h or pad_w):
        return frames
    warnings.warn(
        f"{path.name}: H.264 with yuv420p needs even dimensions; padding {h}x{w} (HxW) to "
        f"{h + pad_h}x{w + pad_w} by repeating the last row/column. Write a .gif or use even sizes to avoid this.",
        stacklevel=3,
    )
    return np.ascontiguousarray(np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge"))


def _create_temporary(folder: Path, stem: str, ext: str) -> str:
    """An empty ``.STEM.XXXXXXXX.EXT`` in ``folder``, created with mode 0o666 so that the umask gives
    the written video the permissions of any other file the user writes (``tempfile.mkstemp``
    would make it 0600 whatever the umask)."""
    for _ in range(100):
        name = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}{ext}")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"could not create a temporary file in {str(folder)!r}")


def write_video(path: PathLike, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write frames (F, H, W, 3), uint8 or float in [0, 1], to ``path`` (.mp4 or .gif).

    crf is the H.264 constant-rate factor for .mp4 (0 = lossless, 18 = visually lossless,
    23 = ffmpeg's default); it is ignored for .gif. Returns the written path.
    """
    path = Path(path)
    ext = _extension(path)
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(fps)) or float(fps) <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}.")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51] (lower = better quality), got {crf}.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"Output folder {str(folder)!r} does not exist; create it first.")

    data = _frames_to_uint8(frames)
    if ext == ".mp4":
        data = _pad_to_even(data, path)
    num_frames, height, width, _ = data.shape

    if ext == ".mp4":
        codec, pix_fmt_out = "libx264", "yuv420p"
        output_params = ["-crf", str(int(crf)), "-movflags", "+faststart"]
    else:
        codec, pix_fmt_out = "gif", "pal8"
        output_params = ["-filter_complex", "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse",
                         "-loop", "0"]

    tmp_name = _create_temporary(folder, path.stem, ext)
    try:
        writer = _imageio_ffmpeg().write_frames(
            tmp_name, (width, height), fps=float(fps), codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pix_fmt_out,
            quality=None, macro_block_size=1, ffmpeg_log_level="error", output_params=output_params,
        )
        try:
            writer.send(None)  # start ffmpeg
            for frame in data:
                writer.send(frame)
        finally:
            writer.close()
        os.replace(tmp_name, path)
    except BaseException as err:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(err, Exception) and not isinstance(err, (ValueError, FileNotFoundError)):
            raise RuntimeError(f"ffmpeg failed to write {str(path)!r} ({num_frames} frames, {width}x{height}): "
                               f"{err}") from err
        raise
    return path


def read_video(path: PathLike) -> Tuple[np.ndarray, float]:
    """Decode a video file into (frames uint8 (F, H, W, 3), fps)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such video file: {str(path)!r}")
    reader = _imageio_ffmpeg().read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
            width, height = meta["size"]
            frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
        except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as err:
            raise ValueError(f"Could not decode {str(path)!r} as a video: {err}") from None
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{str(path)!r} decoded to zero frames.")
    return np.stack(frames), float(meta.get("fps", 0.0))
