"""Benchmark tiers: which generated snapshot and which static shapes each one exports.

  tiny   the test configs (small widths, the real block structure): fast; CI runs it as a smoke test.
  small  the real architecture's widths and head counts with seeded random weights, at a reduced shape
         so that one denoising step takes seconds on 2 cores. Where the exported graphs would not fit
         a shared 24 GB machine, depth is reduced too; export/tiny.py says exactly what (for SVD-XT:
         the UNet's fourth level and 28 of the image tower's 32 layers).
  full   the real architecture at the preset's real shape. Run only when someone asks for it: for
         SVD-XT that is 25 frames at 576x1024 (one UNet step is minutes on 2 cores).

A family plugs in by having a preset folder (export/presets/<model>) and entries in export/tiny.py
TINY named ``tiny-<model>``, ``small-<model>`` and ``full-<model>`` (an entry's optional "shapes"
overrides the tier's, e.g. CogVideoX's 9 frames); nothing here is per family.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from video_aot.export.sources import PRESET_DIR


@dataclass(frozen=True)
class Tier:
    name: str
    snapshot: str            # export/tiny.py TINY entry, formatted with the model name
    shapes: dict = field(default_factory=dict)  # frames, height, width, decode_chunk_size, batch; {} = preset's
    steps: int = 2           # denoising steps per generation
    warmup: int = 1          # generations before the measured ones (the first gives the first-call figures)
    repeats: int = 3         # measured generations
    rounds: int = 1          # exported and torch processes alternate this many times (ratio = median per round)
    graph_kernel: bool = True  # runtime compile option; off for tiny, where AKG's compile time dwarfs the run
    description: str = ""


TIERS = {
    "tiny": Tier("tiny", "tiny-{model}", dict(frames=4, height=64, width=64, decode_chunk_size=2, batch=1),
                 steps=2, warmup=1, repeats=3, graph_kernel=False,
                 description="test configs: the real block structure with small widths; a smoke run"),
    # 4 frames at 64x64: chosen when MindSpore 2.7.1's compiled CPU graphs held ~15 GB for this UNet at
    # 128x128 (broadcasting ops' kernel buffers, expanded at export since; NOTES.md); kept so records compare.
    # Graph-kernel fusion is off: at this shape it did not speed the UNet step up and tripled its compile
    # time (NOTES.md).
    "small": Tier("small", "small-{model}", dict(frames=4, height=64, width=64, decode_chunk_size=2, batch=1),
                  steps=2, warmup=1, repeats=3, rounds=3, graph_kernel=False,
                  description="the real widths and heads with random weights at a reduced shape, and less "
                              "depth where memory demands it (see export/tiny.py TINY['small-<model>'])"),
    # graph-kernel fusion off as in the small tier: on the full SVD-XT it made the first generation 95.6 s
    # against 20.1 s (AKG compiling the 1.5 B UNet), at the same step ratio to torch (NOTES.md, the full SVD-XT)
    "full": Tier("full", "full-{model}", {}, steps=2, warmup=1, repeats=1, graph_kernel=False,
                 description="the real architecture with random weights at the preset's real shape"),
}


def tier_shapes(tier: Tier, model: str) -> dict:
    """The tier's static shapes; ``full`` reads the preset's default shapes."""
    from video_aot.export.tiny import tiny_models

    TINY = tiny_models()

    entry = TINY.get(tier.snapshot.format(model=model), {})
    shapes = dict(tier.shapes)
    if not shapes:  # the preset the tier's snapshot is generated from (animatediff: animatediff-v1-5-2)
        preset = PRESET_DIR / entry.get("base", model) / "preset.json"
        if not preset.is_file():
            raise ValueError(f"model {model!r} has no preset in {PRESET_DIR}; the full tier needs its default_shapes")
        default = json.loads(preset.read_text())["default_shapes"]
        shapes = {"frames": default["frames"], "height": default["height"], "width": default["width"],
                  "decode_chunk_size": default.get("decode_chunk_size", 8), "batch": 1}
    # a family whose frame arithmetic or decoding needs other settings says so in its snapshot's entry
    shapes.update(entry.get("shapes", {}))
    return shapes


def get_tier(name: str) -> Tier:
    if name not in TIERS:
        raise ValueError(f"unknown tier {name!r}; choose one of {sorted(TIERS)}")
    return TIERS[name]
