"""Round trips through runtime/video_io.py (ffmpeg from imageio-ffmpeg)."""

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("imageio_ffmpeg")

from video_aot.runtime.video_io import read_video, write_video  # noqa: E402


def smooth_frames(num_frames=6, height=48, width=64):
    """A slowly moving smooth colour field: compressible, so lossy H.264 keeps it close."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(num_frames):
        r = 0.5 + 0.4 * np.sin(2 * np.pi * (x / width + 0.05 * i))
        g = 0.2 + 0.6 * y / height
        b = 0.5 + 0.3 * np.cos(2 * np.pi * (y / height - 0.05 * i))
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0.0, 1.0)


def few_colour_frames(num_frames=6, height=33, width=47):
    """Moving blocks of a handful of colours: a GIF palette represents them exactly."""
    palette = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 30], [30, 160, 60], [40, 60, 220], [250, 200, 0]],
                       np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([palette[((x + 3 * i) // 8 + y // 8) % len(palette)] for i in range(num_frames)])


def test_mp4_round_trip_uint8(tmp_path):
    frames = (smooth_frames() * 255).round().astype(np.uint8)
    out = write_video(tmp_path / "clip.mp4", frames, fps=7)
    assert out == tmp_path / "clip.mp4" and out.is_file()
    decoded, fps = read_video(out)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    assert fps == pytest.approx(7.0)
    # yuv420p halves the chroma resolution: a few levels of error on this small, steep gradient
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 4.0
    # nothing but the video is left in the folder (the temporary file was moved into place)
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_mp4_float_frames_and_odd_size_keep_frame_count(tmp_path):
    frames = smooth_frames(num_frames=5, height=33, width=47)  # odd H and W
    with pytest.warns(UserWarning, match="padding 33x47"):
        write_video(tmp_path / "odd.mp4", frames, fps=8.5)
    decoded, fps = read_video(tmp_path / "odd.mp4")
    assert decoded.shape == (5, 34, 48, 3)  # one replicated row/column added, frame count unchanged
    assert fps == pytest.approx(8.5)
    expected = (frames * 255).round()
    assert np.abs(decoded[:, :33, :47].astype(np.float32) - expected).mean() < 5.0


def test_gif_round_trip_keeps_identical_frames(tmp_path):
    frames = few_colour_frames(num_frames=6, height=33, width=47)
    frames[4] = frames[3]  # identical consecutive frames must survive (Pillow would merge them)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # odd sizes are fine for GIF: no padding warning
        write_video(tmp_path / "clip.gif", frames, fps=10)
    decoded, fps = read_video(tmp_path / "clip.gif")
    assert decoded.shape == frames.shape
    assert fps == pytest.approx(10.0, rel=0.05)
    assert np.abs(decoded.astype(np.int16) - frames).max() <= 2


def test_gif_of_smooth_content_is_close(tmp_path):
    frames = smooth_frames(num_frames=4)
    write_video(tmp_path / "smooth.gif", frames, fps=8)
    decoded, _ = read_video(tmp_path / "smooth.gif")
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.float32) - (frames * 255).round()).mean() < 8.0  # 256-colour palette


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "clip.gif"
    write_video(path, np.zeros((2, 8, 8, 3), np.uint8), fps=4)
    write_video(path, np.full((3, 8, 8, 3), 255, np.uint8), fps=4)
    decoded, _ = read_video(path)
    assert decoded.shape[0] == 3 and decoded.min() > 240
    assert os.listdir(tmp_path) == ["clip.gif"]


def test_bad_inputs_teach(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\.gif, \.mp4"):
        write_video(tmp_path / "clip.avi", frames, fps=8)
    with pytest.raises(ValueError, match=r"\.gif, \.mp4"):
        write_video(tmp_path / "clip", frames, fps=8)
    with pytest.raises(ValueError, match=r"\(frames, height, width, 3\)"):
        write_video(tmp_path / "clip.mp4", frames[0], fps=8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_video(tmp_path / "clip.mp4", np.full((2, 8, 8, 3), 1.5, np.float32), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.mp4", frames, fps=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_video(tmp_path / "missing_dir" / "clip.mp4", frames, fps=8)
    assert os.listdir(tmp_path) == []

    with pytest.raises(FileNotFoundError, match="No such video file"):
        read_video(tmp_path / "nope.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="Could not decode"):
        read_video(garbage)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_video_follows_the_umask(tmp_path, umask, mode):
    """A written video has the mode of any file the user writes (it was 0600 whatever the umask)."""
    old = os.umask(umask)
    try:
        path = write_video(tmp_path / "clip.mp4", smooth_frames(num_frames=2, height=16, width=16), fps=4)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left behind
