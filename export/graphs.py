"""What an exported graph takes and returns: names, static shapes, dtypes, a dummy-input
builder and the tolerance used to validate the exported graph against the eager network."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mindspore import nn

from video_aot.runtime.manifest import TensorSpec  # noqa: F401  (the one definition, shared with the runtime)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # file stem and manifest key: "unet", "vae_decoder", ...
    inputs: tuple
    outputs: tuple
    tolerance: float = 1e-4  # relative L2 of the exported graph against the eager cell (fp32)
    # fixed values for inputs that must not be random (e.g. timestep ranges); name -> array
    dummy_overrides: dict = field(default_factory=dict, compare=False, hash=False)

    def dummy_inputs(self, seed: int = 0) -> list:
        rng = np.random.default_rng(seed)
        out = []
        for spec in self.inputs:
            if spec.name in self.dummy_overrides:
                out.append(np.asarray(self.dummy_overrides[spec.name], dtype=spec.dtype).reshape(spec.shape))
            elif spec.dtype.startswith("int"):
                out.append(rng.integers(0, 100, spec.shape).astype(spec.dtype))
            else:
                out.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        return out

    def to_json(self) -> dict:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tolerance": self.tolerance,
        }


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class VaeDecode(nn.Cell):
    """Thin wrapper exporting ``vae.decode`` with the 1/scaling_factor folded in:
    latents [K, C, h, w] as the sampler leaves them -> frames [K, 3, H, W] in [-1, 1]."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.inv_scale = 1.0 / scaling_factor

    def construct(self, latents):
        return self.vae.decode(latents * self.inv_scale)


def relax_tolerance(graphs, dtype: str, tolerance: float = 2e-2):
    """Half-precision exports are validated against the eager network with a looser tolerance."""
    if dtype != "fp32":
        for spec, _ in graphs:
            object.__setattr__(spec, "tolerance", tolerance)


def check_decode_chunk_size(decode_chunk_size, total: int, default: int) -> int:
    """diffusers' ``decode_chunk_size``: frames per VAE decode call, fixed at export. None takes
    ``default``; anything but an integer from 1 to ``total`` (the frames decoded, batch x frames) is
    refused rather than clamped."""
    if decode_chunk_size is None:
        return min(default, total)
    if isinstance(decode_chunk_size, bool) or not isinstance(decode_chunk_size, int) \
            or not 1 <= decode_chunk_size <= total:
        raise ValueError(f"decode_chunk_size must be an integer from 1 to {total} (the frames decoded: batch x "
                         f"frames), got {decode_chunk_size!r}")
    return decode_chunk_size
