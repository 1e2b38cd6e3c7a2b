"""export-model: a diffusers snapshot or preset -> static-shape MindIR graphs + manifest."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from video_aot.models.loading import DTYPES


def _raise_interrupt(signum, frame):
    from .writer import request_stop

    reason = f"export-model stopped by signal {signum}"
    request_stop(reason)  # should the exception be swallowed inside MindSpore, the writer still stops
    raise KeyboardInterrupt(reason)


def parse_options(items: list, reserved=frozenset()) -> dict:
    """``--option KEY=VALUE`` items -> export options (VALUE as JSON when it parses, else the text);
    ``reserved``: the names export-model has a flag of its own for."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        if key in reserved:
            raise ValueError(f"--option {key}: use --{key.replace('_', '-')}")
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="export-model",
        description="Export a video diffusion model to static-shape MindSpore graphs (MindIR) plus a manifest.",
    )
    parser.add_argument("model", help="a diffusers snapshot folder (with model_index.json) or a preset name")
    parser.add_argument("--frames", type=int, required=True, help="number of video frames (static)")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--batch", type=int, default=1, help="videos per call (static); default 1")
    parser.add_argument("--dtype", default=None, metavar="DTYPE | COMPONENT=DTYPE,...",
                        help=f"weights dtype, one of {', '.join(DTYPES)} (or float32, float16, bfloat16): one for "
                             "every graph, or per component, e.g. transformer=bf16,text_encoder=fp16,vae=fp16 "
                             "(components not named stay fp32). Default: the preset's dtype_plan when it has one, "
                             "else fp32. Graph inputs and outputs stay float32")
    parser.add_argument("--decode-chunk-size", type=int, default=None,
                        help="frames per VAE decode call (default: all frames at once, as diffusers)")
    parser.add_argument("--weights", default=None, help="folder holding the weights (snapshot layout)")
    parser.add_argument("--variant", default=None, help="weights variant, e.g. fp16 for *.fp16.safetensors")
    parser.add_argument("--random-weights", action="store_true",
                        help="export the real architecture with random weights (benchmarking)")
    parser.add_argument("--forward-chunking", default=None, metavar="CHUNK[:DIM]",
                        help="UNet3D families: feed-forward chunking as diffusers' "
                             "unet.enable_forward_chunking(chunk_size, dim); e.g. 1:1. Same output, lower peak memory")
    parser.add_argument("--tiling", nargs="?", const=True, default=None, metavar="MODE",
                        help="also export the VAE's tile graphs, so that generate-video --tiling / "
                             "pipe.enable_tiling() decode in tiles as diffusers does (CogVideoX, HunyuanVideo, "
                             "LTX-Video). MODE (LTX-Video): spatial (the default: vae.enable_tiling()), framewise "
                             "(vae.use_framewise_decoding) or spatial+framewise")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a family-specific export option (repeatable), e.g. LTX-Video's "
                             "tile_sample_min_height=256; VALUE is read as JSON (numbers, true/false), else as text. "
                             "Options the family's export does not take are refused with the reason")
    parser.add_argument("--with-video-encoder", action="store_true", default=None,
                        help="CogVideoX text-to-video snapshots: add the VAE encoder graphs so that the export also "
                             "serves video-to-video")
    parser.add_argument("--onnx", dest="onnx", action="store_true", default=True,
                        help="the default: also write an ONNX file next to each MindIR graph, checked against it with "
                             "onnxruntime, which then runs the export on the CPU; graphs that cannot be exported are "
                             "named in the manifest's onnx_unavailable with the reason")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="write the MindIR graphs alone (Ascend runs MindIR): about half the export time")
    parser.add_argument("--no-expand-broadcasts", dest="expand_broadcasts", action="store_false",
                        help="write the MindIR as traced. By default every elementwise op that broadcasts a tensor "
                             "gets an explicit BroadcastTo first (same values; MindSpore's CPU kernels otherwise keep "
                             "about 4x such an op's output for the life of the graph)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the manifest that would be written (graphs and static shapes) and stop")
    parser.add_argument("--validate", action="store_true",
                        help="check each exported graph against the eager network on dummy inputs")
    args = parser.parse_args(argv)
    try:
        options = parse_options(args.option, reserved={a.dest for a in parser._actions} - {"option"})
    except ValueError as err:
        parser.error(str(err))

    from .run import export_model

    # a terminated export (SIGTERM) unwinds like Ctrl-C, so its work folder is removed; Ctrl-C (SIGINT) goes
    # through the same handler, so that neither is lost inside MindSpore (export/writer.py, check_stop)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)

    start = time.perf_counter()
    try:
        result = export_model(args.model, args.out, frames=args.frames, height=args.height, width=args.width,
                     batch=args.batch, dtype=args.dtype, decode_chunk_size=args.decode_chunk_size,
                     weights=args.weights, random_weights=args.random_weights, force=args.force,
                     variant=args.variant, validate=args.validate, forward_chunking=args.forward_chunking,
                     tiling=args.tiling, with_video_encoder=args.with_video_encoder, dry_run=args.dry_run,
                     onnx=args.onnx, expand_broadcasts=args.expand_broadcasts, **options)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"export-model: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"export-model: interrupted ({err or 'Ctrl-C'}); nothing was written to {args.out}", file=sys.stderr)
        return 130
    if args.dry_run:
        print(json.dumps(result, indent=2))
        return 0
    print(f"export took {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
