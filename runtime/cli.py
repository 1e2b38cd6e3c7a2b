"""generate-video: run an export's pipeline and write an mp4 (H.264) or a GIF."""
from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generate-video", description="Generate a video from an exported model.")
    parser.add_argument("export_dir", help="folder written by export-model")
    parser.add_argument("--out", required=True, help="output file: .mp4 or .gif")
    parser.add_argument("--image", help="conditioning image (image-to-video families)")
    parser.add_argument("--prompt", help="text prompt (text-to-video families)")
    parser.add_argument("--negative-prompt", default=None, help="what the video should not show (text-to-video)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale (text-to-video; default 9.0, or 15.0 with --video)")
    parser.add_argument("--video", help="input video for video-to-video (text-to-video families): runs "
                                        "VideoToVideoSDPipeline on the same export")
    parser.add_argument("--strength", type=float, default=0.6, help="video-to-video strength in (0, 1]")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic DDIM)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames (must match the export)")
    parser.add_argument("--clip-skip", type=int, default=None, help="CLIP layers to skip (text-to-video)")
    parser.add_argument("--steps", type=int, default=25, help="num_inference_steps")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fps", type=int, default=7,
                        help="frame rate of the written video; SVD also conditions on it (micro-conditioning)")
    parser.add_argument("--motion-bucket-id", type=int, default=127)
    parser.add_argument("--noise-aug-strength", type=float, default=0.02)
    parser.add_argument("--min-guidance-scale", type=float, default=1.0)
    parser.add_argument("--max-guidance-scale", type=float, default=3.0)
    parser.add_argument("--decode-chunk-size", type=int, default=None)
    parser.add_argument("--scheduler", default=None, help="override the export's scheduler: euler, ddim, dpm++")
    parser.add_argument("--tiling", action="store_true",
                        help="CogVideoX: code the VAE in diffusers' spatial tiles (needs export-model --tiling)")
    parser.add_argument("--backend", default=None, choices=("mindspore", "lite"))
    return parser


def pipeline_kwargs(family: str, args) -> dict:
    common = {"num_inference_steps": args.steps, "seed": args.seed, "output_type": "uint8",
              "scheduler": args.scheduler, "decode_chunk_size": args.decode_chunk_size}
    if family == "svd":
        if not args.image:
            raise ValueError("this export is image-to-video: pass --image IN.png")
        return {**common, "image": args.image, "fps": args.fps, "motion_bucket_id": args.motion_bucket_id,
                "noise_aug_strength": args.noise_aug_strength, "min_guidance_scale": args.min_guidance_scale,
                "max_guidance_scale": args.max_guidance_scale}
    if family == "t2v":
        if args.image:
            raise ValueError("this export is text-to-video: pass --prompt (and --video IN.mp4 for video-to-video), "
                             "not --image")
        if not args.prompt:
            raise ValueError("this export is text-to-video: pass --prompt \"...\"")
        kwargs = {k: v for k, v in common.items() if k != "decode_chunk_size"}
        kwargs.update(prompt=args.prompt, negative_prompt=args.negative_prompt, eta=args.eta, clip_skip=args.clip_skip)
        if args.decode_chunk_size is not None:
            raise ValueError("--decode-chunk-size is fixed at export time for this family (export-model "
                             "--decode-chunk-size)")
        if args.video:
            kwargs.update(video=args.video, strength=args.strength)
            if args.guidance_scale is not None:
                kwargs["guidance_scale"] = args.guidance_scale
            return kwargs
        kwargs["num_frames"] = args.num_frames
        if args.guidance_scale is not None:
            kwargs["guidance_scale"] = args.guidance_scale
        return kwargs
    if family == "cogvideox":
        if args.decode_chunk_size is not None:
            raise ValueError("--decode-chunk-size does not apply to CogVideoX: its VAE decodes in diffusers' fixed "
                             "latent-frame batches")
        if not args.prompt:
            raise ValueError("this export is a CogVideoX model: pass --prompt \"...\" (plus --image IN.png for "
                             "image-to-video exports, or --video IN.mp4 for video-to-video)")
        kwargs = {k: v for k, v in common.items() if k != "decode_chunk_size"}
        kwargs.update(prompt=args.prompt, negative_prompt=args.negative_prompt)
        if args.guidance_scale is not None:
            kwargs["guidance_scale"] = args.guidance_scale
        if args.video:
            if args.image:
                raise ValueError("pass either --image (image-to-video) or --video (video-to-video), not both")
            kwargs.update(video=args.video, strength=args.strength)
            return kwargs
        if args.image:
            kwargs["image"] = args.image
        if args.num_frames is not None:
            kwargs["num_frames"] = args.num_frames
        return kwargs
    raise ValueError(f"generate-video does not know family {family!r}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import load_pipeline
    from .video_io import write_video

    try:
        start = time.perf_counter()
        # exports that serve both text- and video-to-video (t2v, cogvideox): --video picks the latter;
        # single-pipeline families refuse it with the pipeline they serve
        pipeline = "video2video" if args.video else None
        pipe = load_pipeline(args.export_dir, backend=args.backend,
                             **({"pipeline": pipeline} if pipeline else {}))
        kwargs = pipeline_kwargs(pipe.family, args)
        if args.tiling:
            if not hasattr(pipe, "enable_tiling"):
                raise ValueError(f"--tiling applies to CogVideoX exports; this one is {pipe.family}")
            pipe.enable_tiling()
        video = pipe(**kwargs).frames[0]  # uint8 [F, H, W, 3]
        write_video(args.out, video, fps=args.fps)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"generate-video: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
