"""FreeInit (https://huggingface.co/papers/2312.07537) in numpy, as diffusers' ``FreeInitMixin``
(pipelines/free_init_utils.py) runs it between denoising passes: the previous pass's result is noised
back to the last training timestep with the first pass's initial noise, its low spatio-temporal
frequencies are kept and its high ones are replaced by fresh noise.

Latents are [B, C, F, h, w]; the filter is [1, C, F, h, w] and acts on the last three axes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILTER_METHODS = ("butterworth", "gaussian", "ideal")


@dataclass(frozen=True)
class FreeInitConfig:
    """diffusers' ``enable_free_init`` arguments (same names and defaults)."""

    num_iters: int = 3
    use_fast_sampling: bool = False
    method: str = "butterworth"
    order: int = 4
    spatial_stop_frequency: float = 0.25
    temporal_stop_frequency: float = 0.25

    def __post_init__(self):
        if isinstance(self.num_iters, bool) or not isinstance(self.num_iters, (int, np.integer)) or self.num_iters < 1:
            raise ValueError(f"FreeInit num_iters must be an int >= 1, got {self.num_iters!r}")
        if self.method not in FILTER_METHODS:
            raise ValueError(f"FreeInit method {self.method!r} is not supported; choose one of {list(FILTER_METHODS)}")
        for name in ("spatial_stop_frequency", "temporal_stop_frequency"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"FreeInit {name} is a normalised frequency in [0, 1], got {value!r}")

    def steps(self, num_inference_steps: int, iteration: int) -> int:
        """Coarse-to-fine sampling: pass k of n runs int(steps / n * (k + 1)) steps (at least 1)."""
        if self.use_fast_sampling:
            return max(1, int(num_inference_steps / self.num_iters * (iteration + 1)))
        return num_inference_steps


def freq_filter(shape: tuple, method: str, order: float, spatial_stop_frequency: float,
                temporal_stop_frequency: float) -> np.ndarray:
    """The low-pass mask, float32 of ``shape`` (..., F, h, w): a function of the squared normalised
    distance d^2 = ((d_s / d_t) (2t/F - 1))^2 + (2y/h - 1)^2 + (2x/w - 1)^2 from the centre of the
    shifted spectrum. Computed in float64 and rounded once, as diffusers fills its float32 mask."""
    frames, height, width = shape[-3], shape[-2], shape[-1]
    if spatial_stop_frequency == 0 or temporal_stop_frequency == 0:
        return np.zeros(shape, np.float32)
    ds, dt = float(spatial_stop_frequency), float(temporal_stop_frequency)
    t = (ds / dt) * (2 * np.arange(frames, dtype=np.float64) / frames - 1)
    y = 2 * np.arange(height, dtype=np.float64) / height - 1
    x = 2 * np.arange(width, dtype=np.float64) / width - 1
    # d_square: [F, h, w]
    d_square = t[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
    if method == "butterworth":
        mask = 1 / (1 + (d_square / ds ** 2) ** order)
    elif method == "gaussian":
        mask = np.exp(-1 / (2 * ds ** 2) * d_square)
    elif method == "ideal":
        mask = (d_square <= ds * 2).astype(np.float64)
    else:
        raise ValueError(f"FreeInit method {method!r} is not supported; choose one of {list(FILTER_METHODS)}")
    return np.broadcast_to(mask.astype(np.float32), shape).copy()


def apply_freq_filter(x: np.ndarray, noise: np.ndarray, low_pass: np.ndarray) -> np.ndarray:
    """Keep ``x``'s low frequencies and ``noise``'s high ones over the last three axes (F, h, w)."""
    axes = (-3, -2, -1)
    x_freq = np.fft.fftshift(np.fft.fftn(x, axes=axes), axes=axes)
    noise_freq = np.fft.fftshift(np.fft.fftn(noise, axes=axes), axes=axes)
    mixed = x_freq * low_pass + noise_freq * (1 - low_pass)
    return np.fft.ifftn(np.fft.ifftshift(mixed, axes=axes), axes=axes).real.astype(np.float32)


def reinitialize(sched, plan, latents: np.ndarray, initial_noise: np.ndarray, config: FreeInitConfig,
                 generator: np.random.Generator) -> np.ndarray:
    """diffusers' ``_apply_free_init`` for iteration > 0: noise the last pass's result to timestep
    num_train_timesteps - 1 with the first pass's noise, draw fresh noise [B, C, F, h, w] from the
    generator and mix them in the frequency domain."""
    from .schedulers import TimestepNotInPlan, add_noise

    shape = latents.shape
    low_pass = freq_filter((1,) + tuple(shape[1:]), config.method, config.order, config.spatial_stop_frequency,
                           config.temporal_stop_frequency)
    last = sched.config.num_train_timesteps - 1
    diffuse = np.full((shape[0],), last, np.int64)
    try:
        z_t = add_noise(plan, latents, initial_noise, timestep=diffuse).astype(np.float32)
    except TimestepNotInPlan as err:  # Euler-style schedulers look the timestep up in their schedule
        raise ValueError(f"FreeInit noises each pass back to timestep {last}, which scheduler {sched.name!r} can "
                         f"only do when {last} is one of its timesteps; the previous pass ran "
                         f"{plan.timesteps.tolist()}. Use scheduler='ddim', or scheduler_overrides="
                         "{'timestep_spacing': 'trailing'} (or 'linspace')") from err
    z_rand = generator.standard_normal(shape, dtype=np.float32)
    return apply_freq_filter(z_t, z_rand, low_pass)
