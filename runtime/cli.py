"""generate-video: run an export's pipeline and write an mp4 (H.264) or a GIF.

The flags are built from the export's pipeline: every argument of its ``__call__`` that a command
line can carry becomes ``--name-with-dashes``, and a flag left out is not passed, so every default
is the pipeline's own (diffusers'). ``generate-video EXPORT --help`` lists that export's flags.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

from .backends import BACKENDS

OUTPUT_SUFFIXES = (".mp4", ".gif")
DEFAULT_FPS = 8  # frame rate of the written file when the pipeline takes no frame-rate argument
FPS_ARGUMENTS = ("fps", "target_fps", "frame_rate")  # a pipeline's frame-rate argument names the file's rate
# __call__ arguments a command line cannot carry (arrays, callables) or that the CLI sets itself
NOT_FLAGS = {"self", "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "callback",
             "callback_steps", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "return_dict",
             "output_type", "cross_attention_kwargs"}
PATH_ARGUMENTS = {"image": "conditioning image file", "video": "input video file (video-to-video)"}
SHORT_FLAGS = {"num_inference_steps": "--steps"}  # kept from earlier releases, next to the long name


def _base_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generate-video", add_help=add_help,
        description="Generate a video from an exported model. Pass the export folder first; "
                    "`generate-video EXPORT --help` lists the arguments of that export's pipeline.")
    parser.add_argument("export_dir", help="folder written by export-model")
    parser.add_argument("--out", required=True, help="output file: .mp4 or .gif")
    parser.add_argument("--pipeline", default=None,
                        help="for exports that serve several pipelines: a diffusers class name or a short name "
                             "such as video2video (default: the one the export was made for; --video picks "
                             "video2video)")
    parser.add_argument("--out-fps", type=int, default=None,
                        help="frame rate of the written file (default: the pipeline's fps / target_fps / frame_rate "
                             f"argument, else {DEFAULT_FPS})")
    parser.add_argument("--tiling", action="store_true", help="code the VAE in diffusers' spatial tiles "
                                                              "(exports made with export-model --tiling)")
    parser.add_argument("--framewise-decoding", action="store_true",
                        help="LTX-Video: decode in diffusers' temporal tiles (vae.use_framewise_decoding; exports "
                             "made with export-model --tiling framewise or spatial+framewise)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help="default: onnxruntime when the export holds an ONNX file for every graph (export-model "
                             "writes them unless given --no-onnx), else MindSpore Lite when importable, else MindSpore")
    return parser


def _flag_type(param: inspect.Parameter):
    """(argparse type, is_bool) from the annotation text (annotations are strings here) or the default."""
    text = str(param.annotation) if param.annotation is not inspect.Parameter.empty else ""
    default = param.default
    if "bool" in text or isinstance(default, bool):
        return None, True
    if "float" in text or isinstance(default, float):
        return float, False
    if "int" in text or isinstance(default, int):
        return int, False
    return str, False


def call_flags(cls) -> list:
    """(name, flags, argparse kwargs) for each __call__ argument of pipeline class ``cls``."""
    out = []
    for name, param in inspect.signature(cls.__call__).parameters.items():
        if name in NOT_FLAGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        text = str(param.annotation)
        if any(t in text for t in ("ndarray", "dict", "Generator", "Callable")):
            continue
        flags = ["--" + name.replace("_", "-")] + ([SHORT_FLAGS[name]] if name in SHORT_FLAGS else [])
        kind, is_bool = _flag_type(param)
        default = None if param.default is inspect.Parameter.empty else param.default
        help_text = PATH_ARGUMENTS.get(name, f"{name} (default: {default!r})")
        if is_bool:
            kwargs = {"action": argparse.BooleanOptionalAction, "help": help_text}
        else:
            kwargs = {"type": kind, "help": help_text}
        if param.default is inspect.Parameter.empty:
            kwargs["required"] = True  # e.g. the image of an image-to-video pipeline
        out.append((name, flags, {**kwargs, "default": argparse.SUPPRESS, "dest": name}))
    return out


def _pipeline_class(export_dir: str, pipeline, video_given: bool):
    from .families import family
    from .manifest import verify_export

    export = verify_export(export_dir, check_sums=False)
    spec = family(export.family)
    if pipeline is None and video_given and "video2video" in spec.aliases:
        pipeline = "video2video"
    name = pipeline if pipeline is not None else export.manifest["pipeline"]
    return spec.pipeline_class(name), pipeline


def build_parser(argv=None):
    """(parser, pipeline class or None, pipeline name or None): the flags of the export named on the
    command line, when there is one."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("export_dir", nargs="?")
    probe.add_argument("--pipeline", default=None)
    probe.add_argument("--video", default=None)
    known, _ = probe.parse_known_args(argv)
    parser = _base_parser(add_help=True)
    cls = pipeline = None
    if known.export_dir and (Path(known.export_dir) / "manifest.json").is_file():
        cls, pipeline = _pipeline_class(known.export_dir, known.pipeline, known.video is not None)
        group = parser.add_argument_group(f"{cls.__name__} arguments (defaults are the pipeline's)")
        for _, flags, kwargs in call_flags(cls):
            group.add_argument(*flags, **kwargs)
    return parser, cls, pipeline


def check_output(out: str):
    """Refuse an output path that cannot be written before any graph runs."""
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: unsupported extension {path.suffix or '(none)'}; use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {out}: folder {parent} is not writable")
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in .mp4 or .gif")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser, cls, pipeline = build_parser(argv)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"generate-video: error: {err}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a flag this export's pipeline does not take (argparse printed why)
        return int(exit_.code or 0)
    if cls is None:
        print(f"generate-video: error: {args.export_dir} is not an export (no manifest.json); run export-model "
              "first", file=sys.stderr)
        return 2
    from . import load_pipeline
    from .video_io import write_video

    kwargs = {name: getattr(args, name) for name, _, _ in call_flags(cls) if hasattr(args, name)}
    try:
        check_output(args.out)
        start = time.perf_counter()
        pipe = load_pipeline(args.export_dir, backend=args.backend,
                             **({"pipeline": pipeline} if pipeline else {}))
        for flag, switch in (("tiling", "enable_tiling"), ("framewise_decoding", "enable_framewise_decoding")):
            if getattr(args, flag):
                if not hasattr(pipe, switch):
                    raise ValueError(f"--{flag.replace('_', '-')} does not apply to {type(pipe).__name__}")
                getattr(pipe, switch)()
        video = pipe(**kwargs, output_type="np").frames[0]  # float [F, H, W, 3] in [0, 1]
        fps = args.out_fps or next((kwargs.get(n) or _default(cls, n) for n in FPS_ARGUMENTS
                                    if kwargs.get(n) or _default(cls, n)), DEFAULT_FPS)
        write_video(args.out, video, fps=int(fps))
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        print(f"generate-video: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _default(cls, name):
    param = inspect.signature(cls.__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


if __name__ == "__main__":
    sys.exit(main())
