"""video-aot-demo: the main job on the embedded default, with no download.

1. generate the tiny SVD-XT-architecture snapshot locally (seeded random weights),
2. export it (25 frames, 128x128; MindIR and ONNX graphs) to exported/tiny-svd-xt,
3. load the export (on onnxruntime, the CPU's default) and generate a video from a synthetic image into outputs/tiny-svd-xt.mp4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_image(height: int, width: int) -> np.ndarray:
    """A deterministic test card: colour gradients and a disc, uint8 (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.45) ** 2) < (min(height, width) * 0.2) ** 2
    image = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 9.0)], -1)
    image[disc] = (1.0, 0.85, 0.2)
    return (image * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="video-aot-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-svd-xt")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--export-dir", default="exported/tiny-svd-xt")
    parser.add_argument("--out", default="outputs/tiny-svd-xt.mp4")
    args = parser.parse_args(argv)

    from video_aot.export.run import export_model

    from . import load_pipeline
    from .video_io import write_video

    start = time.perf_counter()
    export_model(args.model, args.export_dir, frames=args.frames, height=args.height, width=args.width,
                 decode_chunk_size=8)
    print(f"export ready in {time.perf_counter() - start:.1f} s: {args.export_dir}")
    start = time.perf_counter()
    pipe = load_pipeline(args.export_dir)
    print(f"loaded in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    video = pipe(synthetic_image(args.height, args.width), num_inference_steps=args.steps, seed=0,
                 decode_chunk_size=8, output_type="uint8").frames[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_video(args.out, video, fps=7)
    print(f"wrote {args.out}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
