"""Numpy diffusion schedulers that reproduce HF diffusers step for step: one denoising core.

Covered diffusers classes (canonical name in brackets):
``EulerDiscreteScheduler`` ("euler"), ``EulerAncestralDiscreteScheduler`` ("euler_a"),
``DDIMScheduler`` ("ddim"), ``DPMSolverMultistepScheduler`` ("dpm++"), ``LCMScheduler`` ("lcm"),
``FlowMatchEulerDiscreteScheduler`` ("flow_euler"), and CogVideoX's ``CogVideoXDDIMScheduler``
("cogvideox_ddim") and ``CogVideoXDPMScheduler`` ("cogvideox_dpm").

The file is laid out k-diffusion style, in one pass from config to update rule:

1. Configs: one frozen dataclass per diffusers class, every field and default spelled out as in
   its ``__init__``. ``config_from_dict`` is diffusers' ``from_config``: it honours
   ``_use_default_values``, so a class swap gives the new class its own defaults.
2. Schedules, as plain functions of arrays: training betas / alpha_bar, the inference timesteps
   of each spacing, sigma schedules (Karras, exponential, beta), the flow-matching shifts
   (static, dynamic ``mu`` with ``calculate_shift``, ``shift_terminal``) and Mochi's
   ``linear_quadratic_schedule``.
3. The parameterisation wrapper: ``read_model_output`` is the one place that knows how a network
   output is read (epsilon, v_prediction, sample, flow_prediction). It returns ``denoised`` and
   the ODE derivative, so no update rule branches on the model type.
4. Update rules, as plain functions of arrays: ``euler_update``, ``ancestral_sigmas``,
   ``renoise_update`` (LCM / stochastic flow: alpha' x0 + sigma' noise), ``ddim_update`` (and
   its x/x0 form ``ddim_update_from_sample``, which CogVideoX rounds by) and
   ``dpm_solver_pp_update`` (ODE, or the SDE variant CogVideoX uses when noise is given).
5. ``Plan`` (the arrays of one sampling run) and thin scheduler objects: each one turns its
   config into a Plan and, per step, picks the arrays of step ``i``, calls the wrapper and an
   update rule. Multistep history is explicit: passed into ``step`` and returned from it,
   never kept on the object, and there is no hidden ``_step_index``.
6. img2img / video2video helpers: ``add_noise`` / ``scale_noise`` and ``get_timesteps_for_strength``.

Typical loop::

    sched = make_scheduler(config)                  # config: scheduler_config.json as a dict
    plan = sched.set_timesteps(25)                  # flow matching: set_timesteps(25, mu=..., sigmas=...)
    x = noise * plan.init_noise_sigma
    state = None
    for i, t in enumerate(plan.timesteps):
        model_in = sched.scale_model_input(plan, i, x)
        model_out = network(model_in, t)
        x, state = sched.step(plan, i, x, model_out, state, generator=rng)

Precision. diffusers builds the training schedule in torch float32. ``torch.linspace`` uses a
fused multiply-add, and ``torch.cumprod`` accumulates in float64. It builds the inference sigmas
in numpy float64, casts them to float32, and steps in float32 through 0-d tensors. This module
mirrors every one of those casts, so the training betas and alphas_cumprod are bit-identical.
What remains are one-ulp differences from torch's float32 ``sqrt``/``log``/``exp``. On CPU (torch
2.13, AVX2) these are not correctly rounded: torch gives sqrt(2**24 - 1) = 4096.0. Here numpy's
correctly rounded sqrt is used, and log/exp are computed in float64 and rounded once. Measured
against diffusers, steps agree to <= 1e-6 relative. The exception is the end of a zero-terminal-SNR
schedule, which amplifies those ulps: alpha_bar_t there is a difference of nearly equal square
roots, and its last entries agree only to ~1e-5. CogVideoX's schedulers build a scaled_linear
schedule in float64 and do their per-step scalars in float64; that is mirrored too.

A deliberate difference from diffusers. The step index is the explicit ``i`` that the caller
passes in. diffusers instead finds the index by looking the timestep up in ``scheduler.timesteps``.
If the first timestep repeats, the lookup picks the second match. This happens for DPM++ with
Karras sigmas and a very large ``sigma_max``: the SVD config gives timesteps [999, 999, 999, ...].
diffusers then silently skips the first sigma. Here the caller's ``i`` is always used, which equals
diffusers after ``scheduler.set_begin_index(0)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "SCHEDULER_ALIASES",
    "DIFFUSERS_CLASS_NAMES",
    "FLOW_MATCH_CLASS_NAMES",
    "COGVIDEOX_SCHEDULERS",
    "SCHEDULER_CLASS_NAMES",
    "EulerConfig",
    "EulerAncestralConfig",
    "DDIMConfig",
    "DPMSolverConfig",
    "LCMConfig",
    "CogVideoXSchedulerConfig",
    "FlowMatchEulerConfig",
    "config_from_dict",
    "Plan",
    "MultistepState",
    "Prediction",
    "Scheduler",
    "EulerDiscrete",
    "EulerAncestralDiscrete",
    "DDIM",
    "DPMSolverMultistep",
    "LCM",
    "CogVideoXScheduler",
    "FlowMatchEulerDiscrete",
    "make_scheduler",
    "make_cogvideox_scheduler",
    "canonical_scheduler_name",
    "add_noise",
    "scale_noise",
    "get_timesteps_for_strength",
    "torch_linspace_f32",
    "betas_for_alpha_bar",
    "rescale_zero_terminal_snr",
    "make_betas",
    "cumprod_f32",
    "cogvideox_alphas_cumprod",
    "training_sigmas",
    "get_sigmas_karras",
    "get_sigmas_exponential",
    "get_sigmas_beta",
    "sigma_to_t",
    "spaced_timesteps",
    "flow_shift",
    "time_shift",
    "stretch_shift_to_terminal",
    "calculate_shift",
    "linear_quadratic_schedule",
    "vp_alpha_sigma",
    "read_model_output",
    "euler_update",
    "ancestral_sigmas",
    "renoise_update",
    "ddim_update",
    "ddim_update_from_sample",
    "dpm_solver_pp_update",
    "lcm_boundary_scalings",
]

F32 = np.float32

# Accepted names (lower-cased) -> canonical name. diffusers class names are accepted too.
SCHEDULER_ALIASES = {
    "euler": "euler",
    "euler_discrete": "euler",
    "eulerdiscretescheduler": "euler",
    "euler_a": "euler_a",
    "euler_ancestral": "euler_a",
    "eulerancestraldiscretescheduler": "euler_a",
    "ddim": "ddim",
    "ddimscheduler": "ddim",
    "dpm++": "dpm++",
    "dpmsolver++": "dpm++",
    "dpm++2m": "dpm++",
    "dpmsolvermultistepscheduler": "dpm++",
    "lcm": "lcm",
    "lcmscheduler": "lcm",
    "flow_euler": "flow_euler",
    "flowmatch_euler": "flow_euler",
    "flow_match_euler": "flow_euler",
    "flowmatcheulerdiscretescheduler": "flow_euler",
}
# Samplers for noise-prediction models (epsilon / v / sample): interchangeable on one network.
DIFFUSERS_CLASS_NAMES = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
}
# Samplers for flow-matching (velocity) models.
FLOW_MATCH_CLASS_NAMES = {"flow_euler": "FlowMatchEulerDiscreteScheduler"}
# CogVideoX snapshots: accepted names (lower-cased) -> canonical. "ddim" / "dpm" mean CogVideoX's own
# pair when the config is a CogVideoX one.
COGVIDEOX_SCHEDULERS = {
    "cogvideox_ddim": "cogvideox_ddim", "cogvideoxddimscheduler": "cogvideox_ddim", "ddim": "cogvideox_ddim",
    "cogvideox_dpm": "cogvideox_dpm", "cogvideoxdpmscheduler": "cogvideox_dpm", "dpm": "cogvideox_dpm",
}
SCHEDULER_CLASS_NAMES = {
    **DIFFUSERS_CLASS_NAMES, **FLOW_MATCH_CLASS_NAMES,
    "cogvideox_ddim": "CogVideoXDDIMScheduler", "cogvideox_dpm": "CogVideoXDPMScheduler",
}

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def canonical_scheduler_name(name: str) -> str:
    """Map a user-facing name or a diffusers class name to a canonical name ("euler", "euler_a",
    "ddim", "dpm++", "lcm" or "flow_euler")."""
    if not isinstance(name, str) or name.strip().lower() not in SCHEDULER_ALIASES:
        choices = sorted({*DIFFUSERS_CLASS_NAMES, *FLOW_MATCH_CLASS_NAMES, "dpmsolver++",
                          *DIFFUSERS_CLASS_NAMES.values(), *FLOW_MATCH_CLASS_NAMES.values()})
        raise ValueError(f"Unknown scheduler {name!r}. Supported: {', '.join(choices)}.")
    return SCHEDULER_ALIASES[name.strip().lower()]


# ----------------------------------------------------------------------------------------------
# 1. Configs
# ----------------------------------------------------------------------------------------------


def _choice(field: str, value: Any, choices: Sequence[Any], family: str) -> None:
    if value not in choices:
        raise ValueError(
            f"{family}: {field}={value!r} is not supported. Supported values: "
            + ", ".join(repr(c) for c in choices)
            + "."
        )


def _must_be_off(field: str, value: Any, family: str) -> None:
    if value:
        raise ValueError(
            f"{family}: {field}={value!r} is not supported by the numpy runtime "
            f"(only {field}=False is implemented)."
        )


def _no_thresholding(config: Any, family: str) -> None:
    if config.thresholding:
        raise NotImplementedError(
            f"{family}: thresholding=True (dynamic thresholding, Imagen-style) is not implemented in the numpy "
            "runtime. Use thresholding=False; clip_sample/clip_sample_range are supported where diffusers has them."
        )


def _common_checks(config: Any, family: str) -> None:
    if config.trained_betas is None:
        _choice("beta_schedule", config.beta_schedule, BETA_SCHEDULES, family)
    if config.num_train_timesteps < 2:
        raise ValueError(f"{family}: num_train_timesteps must be >= 2, got {config.num_train_timesteps}.")
    _choice("timestep_spacing", config.timestep_spacing, TIMESTEP_SPACINGS, family)
    _choice("prediction_type", config.prediction_type, PREDICTION_TYPES, family)


@dataclass(frozen=True)
class EulerConfig:
    """diffusers ``EulerDiscreteScheduler`` config (same field names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    prediction_type: str = "epsilon"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"

    def validate(self) -> None:
        family = "EulerDiscreteScheduler"
        _common_checks(self, family)
        _choice("interpolation_type", self.interpolation_type, ("linear",), family)
        _choice("timestep_type", self.timestep_type, ("discrete", "continuous"), family)
        _choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES, family)
        _must_be_off("use_exponential_sigmas", self.use_exponential_sigmas, family)
        _must_be_off("use_beta_sigmas", self.use_beta_sigmas, family)


@dataclass(frozen=True)
class EulerAncestralConfig:
    """diffusers ``EulerAncestralDiscreteScheduler`` config (same field names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        family = "EulerAncestralDiscreteScheduler"
        _common_checks(self, family)
        if self.prediction_type == "sample":
            raise ValueError(f"{family}: prediction_type='sample' is not implemented by diffusers either; "
                             "use 'epsilon' or 'v_prediction'.")


@dataclass(frozen=True)
class DDIMConfig:
    """diffusers ``DDIMScheduler`` config (same field names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        _common_checks(self, "DDIMScheduler")
        _no_thresholding(self, "DDIMScheduler")


@dataclass(frozen=True)
class DPMSolverConfig:
    """diffusers ``DPMSolverMultistepScheduler`` config (same field names and defaults).

    ``sigma_min`` / ``sigma_max`` are not arguments of the diffusers class. But when they appear in
    the config dict (as in the SVD snapshot), ``from_config`` keeps them as hidden config entries
    and the Karras conversion uses them, so they are carried here too.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: Optional[str] = None
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None

    def validate(self) -> None:
        family = "DPMSolverMultistepScheduler"
        _common_checks(self, family)
        _choice("algorithm_type", self.algorithm_type, ("dpmsolver++",), family)
        _choice("solver_type", self.solver_type, ("midpoint", "heun"), family)
        _choice("solver_order", self.solver_order, (1, 2, 3), family)
        _choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES, family)
        _choice("variance_type", self.variance_type, (None,), family)
        for name in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                     "use_dynamic_shifting"):
            _must_be_off(name, getattr(self, name), family)
        _no_thresholding(self, family)


@dataclass(frozen=True)
class LCMConfig:
    """diffusers ``LCMScheduler`` config (same field names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0
    rescale_betas_zero_snr: bool = False

    def validate(self) -> None:
        _common_checks(self, "LCMScheduler")
        _no_thresholding(self, "LCMScheduler")


@dataclass(frozen=True)
class CogVideoXSchedulerConfig:
    """diffusers ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler`` config (identical fields
    and defaults in both classes)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.0120
    beta_schedule: str = "scaled_linear"
    trained_betas: Optional[Tuple[float, ...]] = None
    clip_sample: bool = True  # unused by both step functions (diffusers never clips here)
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    clip_sample_range: float = 1.0  # unused, as clip_sample
    sample_max_value: float = 1.0  # unused (no thresholding)
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False
    snr_shift_scale: float = 3.0

    def validate(self) -> None:
        _common_checks(self, "CogVideoXScheduler")


@dataclass(frozen=True)
class FlowMatchEulerConfig:
    """diffusers ``FlowMatchEulerDiscreteScheduler`` config (same field names and defaults).

    ``sigma_min`` / ``sigma_max``: hidden config entries, as for DPM++. diffusers' Karras /
    exponential / beta conversions read them from the config when a foreign config carries them.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: Optional[float] = 0.5
    max_shift: Optional[float] = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: Optional[float] = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None

    def validate(self) -> None:
        family = "FlowMatchEulerDiscreteScheduler"
        if self.num_train_timesteps < 2:
            raise ValueError(f"{family}: num_train_timesteps must be >= 2, got {self.num_train_timesteps}.")
        _choice("time_shift_type", self.time_shift_type, ("exponential", "linear"), family)
        if self.use_karras_sigmas + self.use_exponential_sigmas + self.use_beta_sigmas > 1:
            raise ValueError(f"{family}: use at most one of use_karras_sigmas, use_exponential_sigmas, "
                             "use_beta_sigmas.")
        if self.shift_terminal is not None and self.shift_terminal >= 1:
            raise ValueError(f"{family}: shift_terminal must be < 1, got {self.shift_terminal}.")


def config_from_dict(cls, family: str, config: Mapping[str, Any], overrides: Mapping[str, Any]):
    """Build a config the way diffusers' ``<family>.from_config(config, **overrides)`` does.

    * Every key listed in the config's ``_use_default_values`` is dropped first, so the class gets
      its own default for it. diffusers records that list when a scheduler was built with some
      arguments left at their defaults (in memory, or loaded from a snapshot that lacks them), so
      ``DPMSolverMultistepScheduler.from_config(ddim.config)`` uses DPM's timestep_spacing, not
      DDIM's. For the class that wrote the config this changes nothing: the listed values are its
      own defaults.
    * Keys the family does not know are ignored. Snapshot configs routinely carry keys for other
      schedulers, such as ``clip_sample`` in the SVD Euler config. An unknown *override* is an
      error, because that is a typo by the caller.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{family} has no config field(s) {unknown}. Known fields: {', '.join(sorted(names))}.")
    used_defaults = set(config.get("_use_default_values") or ())
    values = {k: v for k, v in dict(config).items() if k in names and k not in used_defaults}
    values.update(overrides)
    # diffusers renames a few legacy values when it builds the scheduler; mirror that.
    if family == "DPMSolverMultistepScheduler":
        if values.get("algorithm_type") == "deis":
            values["algorithm_type"] = "dpmsolver++"
        if values.get("solver_type") in ("logrho", "bh1", "bh2"):
            values["solver_type"] = "midpoint"
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if flag in values and values[flag] is None:  # diffusers types these as Optional[bool]
            values[flag] = False
    if values.get("trained_betas") is not None:
        values["trained_betas"] = tuple(float(b) for b in np.asarray(values["trained_betas"]).ravel())
    out = cls(**values)
    out.validate()
    return out


# ----------------------------------------------------------------------------------------------
# 2. Schedules (plain functions of arrays)
# ----------------------------------------------------------------------------------------------


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` bit for bit (CPU).

    torch computes ``step`` in float32. It fills the first half as ``fma(step, i, start)`` and
    the second half as ``fma(-step, steps - 1 - i, end)``. The fma is emulated in float64: the
    product is exact there, and one rounding to float32 follows.
    """
    start32, end32 = F32(start), F32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = (end32 - start32) / F32(steps - 1)
    idx = np.arange(steps, dtype=np.float64)
    first = (np.float64(start32) + np.float64(step) * idx).astype(np.float32)
    second = (np.float64(end32) - np.float64(step) * (steps - 1 - idx)).astype(np.float32)
    return np.where(idx < steps // 2, first, second).astype(np.float32)


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine ("squaredcos_cap_v2") betas, computed in Python floats then cast to float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float32)


def cumprod_f32(x: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` on float32 CPU tensors: accumulate in float64, store float32."""
    return np.cumprod(np.asarray(x, dtype=np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale float32 betas to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32."""
    alphas = F32(1.0) - betas
    alphas_bar_sqrt = np.sqrt(cumprod_f32(alphas))
    sqrt_0 = alphas_bar_sqrt[0]
    sqrt_T = alphas_bar_sqrt[-1]
    alphas_bar_sqrt = alphas_bar_sqrt - sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * (sqrt_0 / (sqrt_0 - sqrt_T))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (F32(1.0) - alphas).astype(np.float32)


def make_betas(config: Any, cogvideox: bool = False) -> np.ndarray:
    """Training betas (length num_train_timesteps) as the diffusers constructors build them, in
    float32. ``cogvideox``: as the CogVideoX pair builds them: scaled_linear in float64, and no
    zero-SNR rescaling of the betas (they rescale alpha_bar after their SNR shift instead)."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
        if betas.shape != (n,):
            raise ValueError(f"trained_betas has {betas.size} entries but num_train_timesteps={n}.")
    elif config.beta_schedule == "linear":
        betas = torch_linspace_f32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear" and cogvideox:
        betas = np.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, n, dtype=np.float64) ** 2
    elif config.beta_schedule == "scaled_linear":
        root = torch_linspace_f32(config.beta_start**0.5, config.beta_end**0.5, n)
        betas = root * root
    elif config.beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n)
    else:
        raise ValueError(
            f"beta_schedule={config.beta_schedule!r} is not supported. Supported: {', '.join(BETA_SCHEDULES)}."
        )
    if config.rescale_betas_zero_snr and not cogvideox:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def cogvideox_alphas_cumprod(config: CogVideoXSchedulerConfig) -> np.ndarray:
    """CogVideoX's alpha_bar: shifted by ``snr_shift_scale`` (alpha_bar / (s + (1 - s) alpha_bar)),
    then optionally rescaled to zero terminal SNR. In diffusers' dtype: float64 for scaled_linear,
    float32 otherwise."""
    betas = make_betas(config, cogvideox=True)
    dtype = betas.dtype.type
    alphas = dtype(1.0) - betas
    alphas_cumprod = np.cumprod(alphas) if dtype is np.float64 else cumprod_f32(alphas)
    s = dtype(config.snr_shift_scale)
    alphas_cumprod = (alphas_cumprod / (s + (dtype(1) - s) * alphas_cumprod)).astype(dtype)
    if config.rescale_betas_zero_snr:
        sqrt = np.sqrt(alphas_cumprod)
        first, last = sqrt[0], sqrt[-1]
        sqrt = (sqrt - last) * (first / (first - last))
        alphas_cumprod = (sqrt * sqrt).astype(dtype)
    return alphas_cumprod


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) in float32, ascending in t."""
    return np.sqrt((F32(1.0) - alphas_cumprod) / alphas_cumprod)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) sigmas, float64, descending, without the final zero."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho = float(sigma_min) ** (1 / rho)
    max_inv_rho = float(sigma_max) ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Sigmas evenly spaced in log-sigma, float64, descending, without the final zero."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def get_sigmas_beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """"Beta Sampling is All You Need" (arXiv 2407.12173) sigmas, float64, descending. Needs scipy
    (as diffusers does) for the inverse regularised incomplete beta function."""
    try:
        from scipy.stats import beta as beta_dist
    except ImportError as err:  # pragma: no cover - scipy ships with the runtime's venv
        raise ImportError("use_beta_sigmas needs scipy (scipy.stats.beta.ppf), as in diffusers: "
                          "pip install scipy, or turn use_beta_sigmas off.") from err
    ppf = [beta_dist.ppf(u, alpha, beta) for u in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma: linear interpolation in log-sigma.

    ``log_sigmas`` is float32 and ``sigma`` float64, as in diffusers; the result is float64.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def spaced_timesteps(spacing: str, num_train: int, n: int, steps_offset: int) -> np.ndarray:
    """Float64 timesteps of the "leading" / "trailing" spacings (diffusers' Euler, DDIM, LCM-style
    classes), before each class's dtype cast. "linspace" differs per class and is done there."""
    if spacing == "leading":
        step_ratio = num_train // n
        return (np.arange(0, n) * step_ratio).round()[::-1].copy() + steps_offset
    if spacing == "trailing":
        step_ratio = num_train / n
        return np.arange(num_train, 0, -step_ratio).round().copy() - 1
    raise AssertionError(spacing)


def ddim_timesteps(config: Any, n: int) -> np.ndarray:
    """int64 timesteps of DDIMScheduler and the CogVideoX pair (same three spacings)."""
    T = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    else:
        timesteps = spaced_timesteps(config.timestep_spacing, T, n, config.steps_offset).astype(np.int64)
    if timesteps.max() >= T or timesteps.min() < 0:
        raise ValueError(f"timesteps {timesteps.tolist()} fall outside [0, {T - 1}] "
                         f"(steps_offset={config.steps_offset}); use fewer steps.")
    return timesteps


def _log_f32(x):
    """float32 log, rounded once from float64 (torch's float32 log may differ by 1 ulp)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)


def _exp_f32(x):
    return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)


def _log(x):
    """log in the dtype of x: float32 rounded once from float64, float64 as is."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return _log_f32(x)
    with np.errstate(divide="ignore"):
        return np.log(x)


def _check_num_steps(n: Any, num_train: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= num_train:
        raise ValueError(f"num_inference_steps must be an integer in [1, {num_train}], got {n!r}.")
    return int(n)


# Flow matching. x_sigma = (1 - sigma) x0 + sigma noise; sigma runs from ~1 down to 0.


def flow_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Static resolution shift: shift sigma / (1 + (shift - 1) sigma), in the dtype of sigmas."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, time_shift_type: str = "exponential", sigma: float = 1.0) -> np.ndarray:
    """Dynamic (resolution-dependent) shift with parameter ``mu`` (see ``calculate_shift``):
    exponential: e^mu / (e^mu + (1/t - 1)^sigma); linear: mu / (mu + (1/t - 1)^sigma)."""
    if time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** sigma)
    if time_shift_type == "linear":
        return mu / (mu + (1 / sigmas - 1) ** sigma)
    raise ValueError(f"time_shift_type={time_shift_type!r}; supported: 'exponential', 'linear'.")


def stretch_shift_to_terminal(sigmas: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Stretch the schedule so that its last sigma equals ``shift_terminal`` (LTX-Video)."""
    one_minus = 1 - sigmas
    scale = one_minus[-1] / (1 - shift_terminal)
    return 1 - (one_minus / scale)


def calculate_shift(image_seq_len: float, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """``mu`` for dynamic shifting: linear in the latent sequence length, from base_shift at
    base_seq_len to max_shift at max_seq_len (the LTX / Flux pipelines' calculate_shift).
    ``FlowMatchEulerDiscrete.mu_for(seq_len)`` fills the four constants from the config."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def linear_quadratic_schedule(num_steps: int, threshold_noise: float = 0.025,
                              linear_steps: Optional[int] = None) -> np.ndarray:
    """Mochi-1's sigma schedule (MochiPipeline passes it as ``sigmas=``; threshold_noise 0.025).

    The noise level rises linearly from 0 to ``threshold_noise`` over the first ``linear_steps``
    (default num_steps // 2), then quadratically to 1 at ``num_steps``; the schedule is
    1 - that level, so it runs from 1.0 downwards. Returns float64, length num_steps.
    """
    if linear_steps is None:
        linear_steps = num_steps // 2
    if not 1 <= linear_steps < num_steps:
        raise ValueError(f"linear_quadratic_schedule needs 1 <= linear_steps < num_steps, got "
                         f"linear_steps={linear_steps}, num_steps={num_steps} (num_steps >= 2).")
    quadratic_steps = num_steps - linear_steps
    gap = linear_steps - threshold_noise * num_steps
    quad = gap / (linear_steps * quadratic_steps ** 2)
    lin = threshold_noise / linear_steps - 2 * gap / (quadratic_steps ** 2)
    const = quad * (linear_steps ** 2)
    level = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    level += [quad * (i ** 2) + lin * i + const for i in range(linear_steps, num_steps)]
    return np.array([1.0 - v for v in level], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# 3. The parameterisation wrapper: model output -> denoised
# ----------------------------------------------------------------------------------------------


class Prediction(NamedTuple):
    """What one network output says about the sample.

    denoised:   the estimate of the clean sample x0.
    derivative: dx/dsigma of the probability-flow ODE in the sampler's coordinates: the noise
                estimate eps for the variance-exploding form (and for variance-preserving samples
                in their VE coordinates x/alpha, sigma/alpha); the velocity for flow matching.
    """

    denoised: np.ndarray
    derivative: np.ndarray


def vp_alpha_sigma(sigma):
    """(alpha_t, sigma_t) of a VE sigma: alpha_t = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t."""
    sigma = np.asarray(sigma, dtype=np.float32)
    alpha_t = F32(1) / np.sqrt(sigma * sigma + F32(1))
    return alpha_t, sigma * alpha_t


def read_model_output(prediction_type: str, model_output: np.ndarray, x: np.ndarray, sigma,
                      alpha=None) -> Prediction:
    """The one place that knows how a network output is parameterised.

    The sample is x = alpha * x0 + sigma * noise:
    alpha given:  variance preserving (DDIM, DPM++, LCM, CogVideoX), alpha^2 + sigma^2 = 1.
    alpha None:   variance exploding, x = x0 + sigma * noise (the Euler family; its network saw
                  x / sqrt(sigma^2 + 1), which is why v_prediction carries that factor).
    prediction_type "flow_prediction": x = (1 - sigma) x0 + sigma * noise and the output is the
                  velocity v = noise - x0 (alpha is implied).
    The arithmetic follows diffusers' formula for each case operation by operation.
    """
    sigma = x.dtype.type(sigma) if np.ndim(sigma) == 0 else sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction_type == "flow_prediction":
            return Prediction(x - sigma * model_output, model_output)
        if alpha is None:
            if prediction_type == "epsilon":
                denoised = x - sigma * model_output
            elif prediction_type == "v_prediction":
                c_out = -sigma / np.sqrt(sigma * sigma + F32(1))
                denoised = model_output * c_out + x / (sigma * sigma + F32(1))
            elif prediction_type == "sample":
                denoised = model_output
            else:
                raise ValueError(f"prediction_type={prediction_type!r}; supported: "
                                 f"{', '.join(repr(p) for p in PREDICTION_TYPES)}, 'flow_prediction'.")
            return Prediction(denoised, (x - denoised) / sigma)
        alpha = x.dtype.type(alpha) if np.ndim(alpha) == 0 else alpha
        if prediction_type == "epsilon":
            denoised = (x - sigma * model_output) / alpha
            eps = model_output
        elif prediction_type == "sample":
            denoised = model_output
            eps = (x - alpha * denoised) / sigma
        elif prediction_type == "v_prediction":
            denoised = alpha * x - sigma * model_output
            eps = alpha * model_output + sigma * x
        else:
            raise ValueError(f"prediction_type={prediction_type!r}; supported: "
                             f"{', '.join(repr(p) for p in PREDICTION_TYPES)}, 'flow_prediction'.")
        return Prediction(denoised, eps)


# ----------------------------------------------------------------------------------------------
# 4. Update rules (plain functions of arrays)
# ----------------------------------------------------------------------------------------------


def euler_update(x: np.ndarray, derivative: np.ndarray, sigma, sigma_next) -> np.ndarray:
    """One Euler step of dx/dsigma = derivative, from sigma to sigma_next."""
    return x + derivative * (sigma_next - sigma)


def ancestral_sigmas(sigma_from, sigma_to):
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion get_ancestral_step, eta = 1):
    step deterministically to sigma_down, then add sigma_up worth of fresh noise."""
    sigma_up = np.sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from))
    sigma_down = np.sqrt(sigma_to * sigma_to - sigma_up * sigma_up)
    return sigma_down, sigma_up


def renoise_update(denoised: np.ndarray, alpha_next, sigma_next, noise: np.ndarray) -> np.ndarray:
    """Jump to the next noise level with fresh noise: alpha' x0 + sigma' noise (LCM, stochastic
    flow matching)."""
    return alpha_next * denoised + sigma_next * noise


def ddim_update(denoised, eps, alpha_bar_prev, std_dev_t, noise: Optional[np.ndarray] = None) -> np.ndarray:
    """DDIM: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps (+ std * noise)."""
    alpha_bar_prev, std_dev_t = F32(alpha_bar_prev), F32(std_dev_t)
    direction = np.sqrt(F32(1) - alpha_bar_prev - std_dev_t * std_dev_t) * eps
    x_prev = np.sqrt(alpha_bar_prev) * denoised + direction
    if noise is not None:
        x_prev = x_prev + std_dev_t * noise
    return x_prev


def ddim_update_from_sample(x: np.ndarray, denoised: np.ndarray, alpha_bar, alpha_bar_prev) -> np.ndarray:
    """Deterministic DDIM written in x and x0 instead of eps (CogVideoXDDIMScheduler's form):
    x_prev = sqrt((1 - a_prev) / (1 - a)) x + (sqrt(a_prev) - sqrt(a) sqrt((1 - a_prev) / (1 - a))) x0.
    Same step as ``ddim_update`` with eta = 0; the coefficients are computed in the dtype of the
    alpha_bars (float64 for CogVideoX's scaled_linear schedule), so it rounds as diffusers does."""
    one = np.asarray(alpha_bar).dtype.type(1.0)
    coef_x = ((one - alpha_bar_prev) / (one - alpha_bar)) ** 0.5
    coef_d = alpha_bar_prev ** 0.5 - alpha_bar ** 0.5 * coef_x
    return F32(coef_x) * x + F32(coef_d) * denoised


def dpm_solver_pp_update(x: np.ndarray, denoised: Sequence[np.ndarray], alphas: np.ndarray, sigmas: np.ndarray,
                         solver_type: str = "midpoint", noise: Optional[np.ndarray] = None) -> np.ndarray:
    """Multistep DPM-Solver++ (arXiv 2211.01095) of order ``len(denoised)`` in variance-preserving
    coordinates x = alpha x0 + sigma eps.

    denoised:      the denoised predictions at the last k steps, oldest first (k = 1, 2, 3).
    alphas/sigmas: k + 1 entries, the levels of those predictions (oldest first) then the target.
                   Their dtype is the precision of the scalar arithmetic: float32 as diffusers'
                   DPMSolverMultistepScheduler, float64 as CogVideoXDPMScheduler.
    noise:         None for the ODE solver. Given, the SDE variant (SDE-DPM-Solver++, k <= 2), the
                   solver CogVideoXDPMScheduler runs.
    """
    order = len(denoised)
    if order not in (1, 2, 3) or len(alphas) != order + 1 or len(sigmas) != order + 1:
        raise ValueError(f"dpm_solver_pp_update needs 1-3 denoised values and one more alpha/sigma; "
                         f"got {order}, {len(alphas)} and {len(sigmas)}.")
    lambdas = _log(alphas) - _log(sigmas)  # log-SNR; +inf at sigma = 0
    alpha_t, sigma_t, lambda_t = alphas[-1], sigmas[-1], lambdas[-1]
    sigma_s0, lambda_s0 = sigmas[-2], lambdas[-2]
    m0 = denoised[-1]
    one = lambdas.dtype.type(1.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        h = lambda_t - lambda_s0
        if noise is not None:
            if order == 3:
                raise ValueError("The SDE DPM-Solver++ update is implemented for orders 1 and 2.")
            coef_x = (sigma_t / sigma_s0) * np.exp(-h)
            coef_d = np.expm1(-2 * h) * alpha_t  # = -(1 - e^-2h) alpha_t
            coef_noise = sigma_t * np.sqrt(one - np.exp(-2 * h))
            if order == 2:
                half_inv_r = one / (2 * ((lambda_s0 - lambdas[-3]) / h))
                m0 = (one + half_inv_r) * m0 - half_inv_r * denoised[-2]
            return coef_x * x - coef_d * m0 + coef_noise * noise
        exp_m1 = (np.exp(-h) if lambdas.dtype != np.float32 else _exp_f32(-h)) - one  # exp(-h) - 1
    x_t = (sigma_t / sigma_s0) * x - (alpha_t * exp_m1) * m0
    if order == 1:
        return x_t
    m1 = denoised[-2]
    lambda_s1 = lambdas[-3]
    r0 = (lambda_s0 - lambda_s1) / h
    d1_0 = (one / r0) * (m0 - m1)
    if order == 2:
        if solver_type == "midpoint":
            return x_t - (F32(0.5) * (alpha_t * exp_m1)) * d1_0
        if solver_type == "heun":
            return x_t + (alpha_t * (exp_m1 / h + one)) * d1_0
        raise ValueError(f"solver_type={solver_type!r}; supported: 'midpoint', 'heun'.")
    m2 = denoised[-3]
    lambda_s2 = lambdas[-4]
    r1 = (lambda_s1 - lambda_s2) / h
    d1_1 = (one / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (one / (r0 + r1)) * (d1_0 - d1_1)
    return (
        x_t
        + (alpha_t * (exp_m1 / h + one)) * d1
        - (alpha_t * ((exp_m1 + h) / (h * h) - F32(0.5))) * d2
    )


def lcm_boundary_scalings(timestep, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """(c_skip, c_out) of the Latent Consistency Model boundary condition at a discrete timestep,
    in float32: denoised = c_out * x0_prediction + c_skip * x."""
    scaled = F32(timestep) * F32(timestep_scaling)
    c_skip = F32(sigma_data ** 2) / (scaled * scaled + F32(sigma_data ** 2))
    c_out = scaled / np.sqrt(scaled * scaled + F32(sigma_data ** 2))
    return c_skip, c_out


# ----------------------------------------------------------------------------------------------
# 5. Plans, state and scheduler objects
# ----------------------------------------------------------------------------------------------


def _readonly(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if a is not None:
        a = np.array(a, copy=True)
        a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything one sampling run needs, produced by ``Scheduler.set_timesteps``.

    timesteps:           (N,) what the network sees as ``t``. float32 for Euler and flow matching
                         (continuous log-sigma values for SVD), int64 for the VP schedulers and DPM++.
    sigmas:              (N+1,) float32 noise levels, the last entry the final one. VE sigmas for
                         Euler / DPM++, flow sigmas for flow matching; None for the VP family.
    alphas_cumprod:      (N,) alpha_bar at timesteps[i] (VP family: DDIM, LCM, CogVideoX).
    alphas_cumprod_prev: (N,) the alpha_bar that step i lands on (VP family).
    init_noise_sigma:    multiply the unit-variance starting noise by this.
    """

    scheduler: "Scheduler"
    num_inference_steps: int
    timesteps: np.ndarray
    init_noise_sigma: np.float32
    sigmas: Optional[np.ndarray] = None
    alphas_cumprod: Optional[np.ndarray] = None
    alphas_cumprod_prev: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.timesteps)

    def __repr__(self) -> str:
        return (f"Plan(scheduler={self.scheduler.name!r}, num_inference_steps={self.num_inference_steps}, "
                f"timesteps={self.timesteps!r})")


@dataclass(frozen=True, eq=False)
class MultistepState:
    """Multistep history: the denoised predictions of the previous steps (oldest first).

    step_index is the plan index of the step that produced the newest entry. ``step`` checks it,
    so a stale or foreign state fails loudly.
    """

    step_index: int
    denoised: Tuple[np.ndarray, ...]


def _history(state: Optional[MultistepState], i: int, family: str) -> Tuple[np.ndarray, ...]:
    if state is None:
        return ()
    if not isinstance(state, MultistepState):
        raise ValueError(f"state must be None or the MultistepState returned by the previous step, "
                         f"got {type(state).__name__}.")
    if state.step_index != i - 1:
        raise ValueError(f"{family} state comes from step {state.step_index}, but this is step {i}. "
                         "Pass the state returned by the previous step (or None to restart).")
    return state.denoised


def _check_index(plan: Plan, i: Any, owner: "Scheduler") -> int:
    if not isinstance(plan, Plan):
        raise ValueError(f"Expected the Plan returned by set_timesteps, got {type(plan).__name__}.")
    if plan.scheduler is not owner and (plan.scheduler.name != owner.name or plan.scheduler.config != owner.config):
        raise ValueError(f"This plan was made by a different scheduler ({plan.scheduler.name!r} with another "
                         f"config); build it with this scheduler's set_timesteps.")
    n = len(plan.timesteps)
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
        raise ValueError(f"Step index must be an integer in [0, {n - 1}] for this plan, got {i!r}. "
                         "Pass the loop index i, not the timestep t.")
    return int(i)


def _as_f32(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what} must be a floating-point array, got dtype {a.dtype}.")
    return a.astype(np.float32, copy=False)


def _step_inputs(plan: Plan, i: Any, owner: "Scheduler", x: np.ndarray, model_output: np.ndarray):
    """Checked (i, x, model_output) as float32, plus model_output's dtype (what diffusers returns)."""
    i = _check_index(plan, i, owner)
    if np.shape(x) != np.shape(model_output):
        raise ValueError(f"model_output shape {np.shape(model_output)} does not match sample shape {np.shape(x)}.")
    out_dtype = np.asarray(model_output).dtype
    return i, _as_f32(x, "sample"), _as_f32(model_output, "model_output"), out_dtype


def _draw(generator: Optional[np.random.Generator], shape, family: str) -> np.ndarray:
    if generator is None:
        raise ValueError(f"{family} adds fresh noise every step: pass generator=np.random.default_rng(seed).")
    return generator.standard_normal(shape, dtype=np.float32)


class Scheduler:
    """Common interface. A scheduler is its config plus the tables derived from it; everything
    that changes during a run lives in the Plan and in the state passed through ``step``."""

    name: ClassVar[str]
    config: Any

    def set_timesteps(self, num_inference_steps: int) -> Plan:  # pragma: no cover - interface
        raise NotImplementedError

    def scale_model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray:
        _check_index(plan, i, self)
        return x

    def add_noise(self, plan: Plan, original: np.ndarray, noise: np.ndarray, step_index: Any) -> np.ndarray:
        """``add_noise(plan, original, noise, step_index=step_index)``."""
        return add_noise(plan, original, noise, step_index=step_index)

    def _noise_levels(self, plan: Optional[Plan], idx: Optional[np.ndarray], timesteps: Optional[np.ndarray],
                      dtype) -> Tuple[np.ndarray, np.ndarray]:
        """(alpha, sigma) of the forward process x = alpha x0 + sigma noise at plan indices ``idx``
        (or, for the VP family, at training ``timesteps``), in diffusers' arithmetic."""
        raise NotImplementedError  # pragma: no cover - interface


# --- variance exploding: Euler, Euler ancestral, DPM-Solver++ (k-diffusion sigmas) -------------


def _zero_snr_alphas_cumprod(config: Any) -> np.ndarray:
    """float32 alpha_bar; a zero-terminal-SNR schedule keeps its last entry at 2**-24, as diffusers'
    Euler-type classes do, so the first sigma stays finite."""
    alphas_cumprod = cumprod_f32(F32(1.0) - make_betas(config))
    if config.rescale_betas_zero_snr:
        alphas_cumprod[-1] = F32(2.0**-24)
    return alphas_cumprod


def euler_plan_arrays(config: EulerConfig, alphas_cumprod: np.ndarray, n: int):
    """(timesteps f32, sigmas f32 with the final one, init_noise_sigma) of EulerDiscreteScheduler."""
    T = config.num_train_timesteps
    # 1. timesteps on the training grid
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    else:
        timesteps = spaced_timesteps(config.timestep_spacing, T, n, config.steps_offset).astype(np.float32)

    # 2. sigmas at those timesteps (float64), optionally replaced by Karras sigmas
    train_sigmas = training_sigmas(alphas_cumprod)
    log_sigmas = np.log(train_sigmas)
    sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
    if config.use_karras_sigmas:
        sigma_min = config.sigma_min if config.sigma_min is not None else sigmas[-1].item()
        sigma_max = config.sigma_max if config.sigma_max is not None else sigmas[0].item()
        sigmas = get_sigmas_karras(n, sigma_min, sigma_max)
        timesteps = sigma_to_t(sigmas, log_sigmas)

    # 3. final sigma, then float32
    sigma_last = train_sigmas[0] if config.final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

    # 4. what the network sees as t
    if config.timestep_type == "continuous" and config.prediction_type == "v_prediction":
        timesteps = F32(0.25) * _log_f32(sigmas[:-1])  # EDM c_noise, used by SVD
    else:
        timesteps = np.asarray(timesteps).astype(np.float32)

    max_sigma = sigmas.max()
    if config.timestep_spacing in ("linspace", "trailing"):
        init_noise_sigma = max_sigma
    else:
        init_noise_sigma = np.sqrt(max_sigma * max_sigma + F32(1))
    return timesteps, sigmas, F32(init_noise_sigma)


class _VESigmas(Scheduler):
    """Shared by the schedulers whose plan is a VE sigma array (fields: config, betas, alphas_cumprod)."""

    @classmethod
    def from_config(cls, config: Any) -> "_VESigmas":
        config.validate()
        return cls(config=config, betas=_readonly(make_betas(config)),
                   alphas_cumprod=_readonly(_zero_snr_alphas_cumprod(config)))

    def _noise_levels(self, plan, idx, timesteps, dtype):
        sigma = plan.sigmas.astype(dtype)[idx]
        return np.ones_like(sigma), sigma


class _EulerFamily(_VESigmas):
    """Euler and Euler ancestral: EulerDiscreteScheduler's sigmas, network input x / sqrt(sigma^2 + 1)."""

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        n = _check_num_steps(num_inference_steps, self.config.num_train_timesteps)
        config = self.config
        if not isinstance(config, EulerConfig):
            # Euler ancestral: the plain Euler schedule (linear interpolation, no Karras, final sigma
            # zero, discrete t), which its config fields spell out with Euler's defaults
            config = EulerConfig(**dataclasses.asdict(config))
        timesteps, sigmas, init_noise_sigma = euler_plan_arrays(config, self.alphas_cumprod, n)
        return Plan(self, n, _readonly(timesteps), init_noise_sigma, sigmas=_readonly(sigmas))

    def scale_model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray:
        """x / sqrt(sigma_i^2 + 1)."""
        i = _check_index(plan, i, self)
        sigma = plan.sigmas[i]
        return x / np.sqrt(sigma * sigma + F32(1))


@dataclass(frozen=True, eq=False)
class EulerDiscrete(_EulerFamily):
    """diffusers ``EulerDiscreteScheduler`` (s_churn = 0 path)."""

    name: ClassVar[str] = "euler"
    config: EulerConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, None]:
        """Deterministic Euler step (diffusers' default s_churn=0); ``generator`` is unused.

        The result is cast back to model_output's dtype, as diffusers does.
        """
        i, x, model_output, out_dtype = _step_inputs(plan, i, self, x, model_output)
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        pred = read_model_output(self.config.prediction_type, model_output, x, sigma)
        return euler_update(x, pred.derivative, sigma, sigma_next).astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class EulerAncestralDiscrete(_EulerFamily):
    """diffusers ``EulerAncestralDiscreteScheduler``: Euler down to sigma_down, then fresh noise
    of size sigma_up, drawn from the caller's generator once per step (as diffusers draws it)."""

    name: ClassVar[str] = "euler_a"
    config: EulerAncestralConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, None]:
        i, x, model_output, out_dtype = _step_inputs(plan, i, self, x, model_output)
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        pred = read_model_output(self.config.prediction_type, model_output, x, sigma)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
        x_next = euler_update(x, pred.derivative, sigma, sigma_down)
        noise = _draw(generator, model_output.shape, "EulerAncestralDiscreteScheduler")
        return (x_next + noise * sigma_up).astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class DPMSolverMultistep(_VESigmas):
    """diffusers ``DPMSolverMultistepScheduler`` (algorithm_type "dpmsolver++", orders 1-3)."""

    name: ClassVar[str] = "dpm++"
    config: DPMSolverConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        config = self.config
        T = config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)

        # 1. the last usable training timestep (lambda_min_clipped; -inf keeps all of them)
        lambda_t = _log_f32(np.sqrt(self.alphas_cumprod)) - _log_f32(np.sqrt(F32(1) - self.alphas_cumprod))
        clipped_idx = int(np.searchsorted(np.flip(lambda_t), config.lambda_min_clipped, side="left"))
        last_timestep = T - clipped_idx

        # 2. timesteps
        if config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy()
        elif config.timestep_spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy() + config.steps_offset
        else:  # trailing
            step_ratio = T / n
            timesteps = np.arange(last_timestep, 0, -step_ratio).round().copy() - 1
        timesteps = timesteps.astype(np.int64)

        # 3. sigmas
        train_sigmas = training_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas)
        if config.use_karras_sigmas:
            in_sigmas = np.flip(train_sigmas).copy()
            sigma_min = config.sigma_min if config.sigma_min is not None else in_sigmas[-1].item()
            sigma_max = config.sigma_max if config.sigma_max is not None else in_sigmas[0].item()
            sigmas = get_sigmas_karras(n, sigma_min, sigma_max)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            if config.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        sigma_last = train_sigmas[0] if config.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        return Plan(self, n, _readonly(timesteps), F32(1.0), sigmas=_readonly(sigmas))

    def _noise_levels(self, plan, idx, timesteps, dtype):
        sigma = plan.sigmas.astype(dtype)[idx]
        alpha_t = dtype.type(1) / np.sqrt(sigma * sigma + dtype.type(1))
        return alpha_t, sigma * alpha_t

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray,
             state: Optional[MultistepState] = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, MultistepState]:
        """One multistep DPM-Solver++ step. ``state`` is what the previous step returned, or None
        at the first step (also after a restart: the first step is first order). ``generator`` is
        unused (the ODE solver is deterministic)."""
        i, x, model_output, out_dtype = _step_inputs(plan, i, self, x, model_output)
        history = _history(state, i, "DPM-Solver++")
        config = self.config
        n = len(plan.timesteps)
        lower_order_final = (i == n - 1) and (
            config.euler_at_final or (config.lower_order_final and n < 15) or config.final_sigmas_type == "zero"
        )
        lower_order_second = (i == n - 2) and config.lower_order_final and n < 15
        if config.solver_order == 1 or len(history) < 1 or lower_order_final:
            order = 1
        elif config.solver_order == 2 or len(history) < 2 or lower_order_second:
            order = 2
        else:
            order = 3

        alpha_s, sigma_s = vp_alpha_sigma(plan.sigmas[i])
        pred = read_model_output(config.prediction_type, model_output, x, sigma_s, alpha_s)
        outputs = (*history, pred.denoised)
        alphas, sigmas = vp_alpha_sigma(plan.sigmas[i + 1 - order: i + 2])
        x_next = dpm_solver_pp_update(x, outputs[-order:], alphas, sigmas, config.solver_type)

        keep = config.solver_order - 1
        new_state = MultistepState(step_index=i, denoised=outputs[-keep:] if keep > 0 else ())
        return x_next.astype(out_dtype, copy=False), new_state


# --- variance preserving on the training grid: DDIM, LCM, CogVideoX ---------------------------


class _VPTable(Scheduler):
    """Shared by the schedulers that step on alpha_bar looked up at integer timesteps (fields:
    config, betas, alphas_cumprod, final_alpha_cumprod; CogVideoX builds its own tables)."""

    alphas_cumprod: np.ndarray
    final_alpha_cumprod: Any

    @classmethod
    def from_config(cls, config: Any) -> "_VPTable":
        config.validate()
        betas = make_betas(config)
        alphas_cumprod = cumprod_f32(F32(1.0) - betas)
        final = F32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
        return cls(config=config, betas=_readonly(betas), alphas_cumprod=_readonly(alphas_cumprod),
                   final_alpha_cumprod=F32(final))

    def _plan(self, n: int, timesteps: np.ndarray, prev: np.ndarray) -> Plan:
        """Plan stepping from timesteps[i] to prev[i] (below 0: final_alpha_cumprod)."""
        ac = self.alphas_cumprod
        alphas_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], self.final_alpha_cumprod).astype(ac.dtype)
        return Plan(self, n, _readonly(timesteps), F32(1.0), alphas_cumprod=_readonly(ac[timesteps]),
                    alphas_cumprod_prev=_readonly(alphas_prev))

    def _noise_levels(self, plan, idx, timesteps, dtype):
        t = plan.timesteps[idx] if idx is not None else np.asarray(timesteps).astype(np.int64)
        if t.min() < 0 or t.max() >= len(self.alphas_cumprod):
            raise ValueError(f"timestep(s) {t.tolist()} outside [0, {len(self.alphas_cumprod) - 1}].")
        alpha_bar = self.alphas_cumprod.astype(dtype)[t]
        return np.sqrt(alpha_bar), np.sqrt(dtype.type(1) - alpha_bar)


@dataclass(frozen=True, eq=False)
class DDIM(_VPTable):
    """diffusers ``DDIMScheduler``."""

    name: ClassVar[str] = "ddim"
    config: DDIMConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    final_alpha_cumprod: np.float32

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        T = self.config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)
        timesteps = ddim_timesteps(self.config, n)
        # diffusers steps from t to t - T // n whatever the spacing; below 0 lands on final_alpha_cumprod
        return self._plan(n, timesteps, timesteps - T // n)

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             eta: float = 0.0, generator: Optional[np.random.Generator] = None,
             variance_noise: Optional[np.ndarray] = None) -> Tuple[np.ndarray, None]:
        """One DDIM step. With eta > 0, noise comes from ``variance_noise``, or else is drawn from
        ``generator`` (a caller-seeded ``np.random.Generator``) as float32 standard normals."""
        out_dtype = np.result_type(np.asarray(x).dtype, np.asarray(model_output).dtype)
        i, x, model_output, _ = _step_inputs(plan, i, self, x, model_output)
        config = self.config
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0 = DDIM, 1 = DDPM-like), got {eta}.")

        alpha_bar = plan.alphas_cumprod[i]
        alpha_bar_prev = plan.alphas_cumprod_prev[i]
        beta_bar = F32(1) - alpha_bar
        pred = read_model_output(config.prediction_type, model_output, x, np.sqrt(beta_bar), np.sqrt(alpha_bar))
        denoised = pred.denoised
        if config.clip_sample:
            r = F32(config.clip_sample_range)
            denoised = np.clip(denoised, -r, r)

        variance = ((F32(1) - alpha_bar_prev) / beta_bar) * (F32(1) - alpha_bar / alpha_bar_prev)
        std_dev_t = F32(eta) * np.sqrt(variance)

        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("Pass either generator or variance_noise to DDIM step, not both.")
            if variance_noise is None:
                if generator is None:
                    raise ValueError("DDIM with eta > 0 adds noise: pass generator=np.random.default_rng(seed) "
                                     "or variance_noise=<array shaped like the sample>.")
                noise = generator.standard_normal(x.shape, dtype=np.float32)
            else:
                noise = _as_f32(variance_noise, "variance_noise")
                if noise.shape != x.shape:
                    raise ValueError(f"variance_noise shape {noise.shape} does not match sample shape {x.shape}.")
        x_prev = ddim_update(denoised, pred.derivative, alpha_bar_prev, std_dev_t, noise)
        return x_prev.astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class LCM(_VPTable):
    """diffusers ``LCMScheduler``: each step predicts x0 through the consistency boundary condition
    and re-noises it to the next timestep with fresh noise from the caller's generator (none after
    the last step)."""

    name: ClassVar[str] = "lcm"
    config: LCMConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    final_alpha_cumprod: np.float32

    def set_timesteps(self, num_inference_steps: int, *, original_inference_steps: Optional[int] = None,
                      strength: float = 1.0) -> Plan:
        """The LCM schedule: ``num_inference_steps`` evenly picked from the distillation schedule
        (``original_inference_steps`` timesteps k - 1, 2k - 1, ... with k = T // original)."""
        config = self.config
        T = config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)
        original = config.original_inference_steps if original_inference_steps is None else original_inference_steps
        if not 1 <= original <= T:
            raise ValueError(f"original_inference_steps must be in [1, {T}], got {original}.")
        if n > original:
            raise ValueError(f"num_inference_steps={n} cannot be larger than original_inference_steps={original}: "
                             "the LCM schedule is a subset of the distillation schedule.")
        k = T // original
        origin = np.arange(1, int(original * strength) + 1) * k - 1
        if len(origin) // n < 1:
            raise ValueError(f"original_inference_steps x strength = {original} x {strength} leaves fewer than "
                             f"num_inference_steps={n} timesteps; use fewer steps or a higher strength.")
        origin = origin[::-1].copy()
        picks = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        timesteps = origin[picks].astype(np.int64)
        # step i lands on the next timestep; the last step on its own (its result is the denoised sample)
        prev = np.concatenate([timesteps[1:], timesteps[-1:]])
        return self._plan(n, timesteps, prev)

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, None]:
        i, x, model_output, out_dtype = _step_inputs(plan, i, self, x, model_output)
        config = self.config
        alpha_bar, alpha_bar_prev = plan.alphas_cumprod[i], plan.alphas_cumprod_prev[i]
        pred = read_model_output(config.prediction_type, model_output, x, np.sqrt(F32(1) - alpha_bar),
                                 np.sqrt(alpha_bar))
        x0 = pred.denoised
        if config.clip_sample:
            x0 = np.clip(x0, -F32(config.clip_sample_range), F32(config.clip_sample_range))
        c_skip, c_out = lcm_boundary_scalings(plan.timesteps[i], config.timestep_scaling)
        denoised = c_out * x0 + c_skip * x
        if i == len(plan.timesteps) - 1:
            return denoised.astype(out_dtype, copy=False), None
        noise = _draw(generator, model_output.shape, "LCMScheduler")
        x_next = renoise_update(denoised, np.sqrt(alpha_bar_prev), np.sqrt(F32(1) - alpha_bar_prev), noise)
        return x_next.astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class CogVideoXScheduler(_VPTable):
    """``kind`` "cogvideox_ddim" (CogVideoXDDIMScheduler: deterministic DDIM, eta ignored as in
    diffusers' math) or "cogvideox_dpm" (CogVideoXDPMScheduler: the stochastic DPM-Solver++(2M),
    two noise draws on second-order steps, as diffusers draws them). ``step`` returns
    (prev_sample, state); pass the state back to the next step."""

    kind: str
    config: CogVideoXSchedulerConfig
    alphas_cumprod: np.ndarray
    final_alpha_cumprod: Any

    @property
    def name(self) -> str:
        return self.kind

    @classmethod
    def from_config(cls, kind: str, config: CogVideoXSchedulerConfig) -> "CogVideoXScheduler":
        config.validate()
        ac = cogvideox_alphas_cumprod(config)
        final = ac.dtype.type(1.0) if config.set_alpha_to_one else ac[0]
        return cls(kind=kind, config=config, alphas_cumprod=_readonly(ac), final_alpha_cumprod=final)

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        T = self.config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)
        timesteps = ddim_timesteps(self.config, n)
        return self._plan(n, timesteps, timesteps - T // n)

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray,
             state: Optional[MultistepState] = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, MultistepState]:
        i, x, model_output, _ = _step_inputs(plan, i, self, x, model_output)
        history = _history(state, i, self.kind)
        # float64 scalars for a scaled_linear schedule, as diffusers computes them
        a_t, a_prev = plan.alphas_cumprod[i], plan.alphas_cumprod_prev[i]
        one = a_t.dtype.type(1.0)
        pred = read_model_output(self.config.prediction_type, model_output, x, F32((one - a_t) ** 0.5),
                                 F32(a_t ** 0.5))
        new_state = MultistepState(step_index=i, denoised=(pred.denoised,))
        if self.kind == "cogvideox_ddim":
            return ddim_update_from_sample(x, pred.denoised, a_t, a_prev), new_state

        noise = _draw(generator, x.shape, "CogVideoXDPMScheduler")
        lands_on_final = int(plan.timesteps[i]) - self.config.num_train_timesteps // plan.num_inference_steps < 0
        if history and not lands_on_final:
            noise = _draw(generator, x.shape, "CogVideoXDPMScheduler")  # diffusers draws again for order 2
            a = np.array([plan.alphas_cumprod[i - 1], a_t, a_prev])
            outputs = (history[-1], pred.denoised)
        else:
            a = np.array([a_t, a_prev])
            outputs = (pred.denoised,)
        x_next = dpm_solver_pp_update(x, outputs, np.sqrt(a), np.sqrt(one - a), noise=noise)
        return x_next, new_state


# --- flow matching -------------------------------------------------------------------------------


def flow_match_arrays(config: FlowMatchEulerConfig, num_inference_steps: Optional[int] = None,
                      sigmas: Optional[Sequence[float]] = None, mu: Optional[float] = None,
                      timesteps: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(timesteps f32 (N,), sigmas f32 (N+1,)) of FlowMatchEulerDiscreteScheduler.set_timesteps.

    Default: N timesteps evenly spaced between the (shifted) training sigma_max and sigma_min.
    ``sigmas`` / ``timesteps``: custom values (N of them), shifted like the default ones; given
    timesteps are used as they are. Then, in diffusers' order: the static shift, or the dynamic
    shift with ``mu``; ``shift_terminal``; Karras / exponential / beta spacing; ``invert_sigmas``.
    """
    T = config.num_train_timesteps
    if config.use_dynamic_shifting and mu is None:
        raise ValueError("This FlowMatchEulerDiscreteScheduler config has use_dynamic_shifting=True: pass mu= "
                         "(e.g. scheduler.mu_for(latent_sequence_length), see calculate_shift).")
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) need the same length.")
    if num_inference_steps is None:
        if sigmas is None and timesteps is None:
            raise ValueError("set_timesteps needs num_inference_steps, sigmas= or timesteps=.")
        num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
    elif (sigmas is not None and len(sigmas) != num_inference_steps) or (
            timesteps is not None and len(timesteps) != num_inference_steps):
        raise ValueError(f"sigmas / timesteps must have num_inference_steps={num_inference_steps} entries.")
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}.")

    # the training schedule's end points (statically shifted unless shifting is dynamic)
    train_sigmas = np.linspace(1, T, T, dtype=np.float32)[::-1] / T
    if not config.use_dynamic_shifting:
        train_sigmas = flow_shift(train_sigmas, config.shift)
    sigma_min, sigma_max = float(train_sigmas[-1]), float(train_sigmas[0])

    given_timesteps = None if timesteps is None else np.array(timesteps).astype(np.float32)
    if sigmas is None:
        t = given_timesteps if given_timesteps is not None else np.linspace(sigma_max * T, sigma_min * T, n)
        s = t / T
    else:
        s = np.array(sigmas).astype(np.float32)
    if config.use_dynamic_shifting:
        s = time_shift(s, mu, config.time_shift_type)
    else:
        s = flow_shift(s, config.shift)
    if config.shift_terminal:
        s = stretch_shift_to_terminal(s, config.shift_terminal)
    if config.use_karras_sigmas or config.use_exponential_sigmas or config.use_beta_sigmas:
        lo = config.sigma_min if config.sigma_min is not None else float(s[-1])
        hi = config.sigma_max if config.sigma_max is not None else float(s[0])
        if config.use_karras_sigmas:
            s = get_sigmas_karras(n, lo, hi)
        elif config.use_exponential_sigmas:
            s = get_sigmas_exponential(n, lo, hi)
        else:
            s = get_sigmas_beta(n, lo, hi)

    s = np.asarray(s).astype(np.float32)
    t = given_timesteps if given_timesteps is not None else s * F32(T)
    if config.invert_sigmas:
        s = F32(1.0) - s
        t = s * F32(T)
        s = np.concatenate([s, np.ones(1, np.float32)])
    else:
        s = np.concatenate([s, np.zeros(1, np.float32)])
    return t.astype(np.float32), s


@dataclass(frozen=True, eq=False)
class FlowMatchEulerDiscrete(Scheduler):
    """diffusers ``FlowMatchEulerDiscreteScheduler``. The network predicts the velocity
    v = noise - x0 of x_sigma = (1 - sigma) x0 + sigma noise; a step is Euler from sigma_i to
    sigma_{i+1}, or with ``stochastic_sampling`` a jump to the next level with fresh noise."""

    name: ClassVar[str] = "flow_euler"
    config: FlowMatchEulerConfig

    @classmethod
    def from_config(cls, config: FlowMatchEulerConfig) -> "FlowMatchEulerDiscrete":
        config.validate()
        return cls(config=config)

    def mu_for(self, image_seq_len: int) -> float:
        """``mu`` for a latent sequence length (frames x height x width in latent tokens), from this
        config's base/max shift and sequence lengths, as the LTX pipeline computes it."""
        c = self.config
        return calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, *, sigmas: Optional[Sequence[float]] = None,
                      mu: Optional[float] = None, timesteps: Optional[Sequence[float]] = None) -> Plan:
        """diffusers' ``set_timesteps(num_inference_steps, sigmas=, mu=, timesteps=)``; see
        ``flow_match_arrays``. Returns the Plan (timesteps f32, sigmas f32 with the final one)."""
        t, s = flow_match_arrays(self.config, num_inference_steps, sigmas, mu, timesteps)
        return Plan(self, len(t), _readonly(t), F32(1.0), sigmas=_readonly(s))

    def _noise_levels(self, plan, idx, timesteps, dtype):
        sigma = plan.sigmas.astype(dtype)[idx]
        return dtype.type(1.0) - sigma, sigma

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             generator: Optional[np.random.Generator] = None,
             per_token_timesteps: Optional[np.ndarray] = None) -> Tuple[np.ndarray, None]:
        """One step from sigma_i to sigma_{i+1}. With stochastic_sampling, noise is drawn from
        ``generator`` every step; otherwise ``generator`` is unused.

        per_token_timesteps: [B, N] timesteps of the tokens of a packed sample x: [B, N, C]
        (LTXConditionPipeline: conditioning tokens sit at lower noise). Each token steps from its own
        sigma to the largest plan sigma below it. Pass the network's velocity as for any step:
        diffusers' pipeline passes -velocity there and its step flips the sign of dt, which is the
        same arithmetic.
        """
        i, x, model_output, out_dtype = _step_inputs(plan, i, self, x, model_output)
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        if per_token_timesteps is not None:
            if self.config.stochastic_sampling:
                raise NotImplementedError("per_token_timesteps with stochastic_sampling=True is not implemented "
                                          "(diffusers' pipelines do not combine them).")
            token_sigmas = _as_f32(per_token_timesteps, "per_token_timesteps") / F32(self.config.num_train_timesteps)
            if token_sigmas.shape != x.shape[:-1]:
                raise ValueError(f"per_token_timesteps shape {token_sigmas.shape} must be the sample's shape without "
                                 f"its channel axis, {x.shape[:-1]}.")
            levels = plan.sigmas.reshape(-1, *([1] * token_sigmas.ndim))
            below = np.where(levels < token_sigmas[None] - F32(1e-6), levels, F32(0)).max(axis=0)
            sigma, sigma_next = token_sigmas[..., None], below[..., None]
        pred = read_model_output("flow_prediction", model_output, x, sigma)
        if self.config.stochastic_sampling:
            noise = _draw(generator, x.shape, "FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)")
            x_next = renoise_update(pred.denoised, F32(1.0) - sigma_next, sigma_next, noise)
        else:
            x_next = euler_update(x, pred.derivative, sigma, sigma_next)
        return x_next.astype(out_dtype, copy=False), None


# --- building a scheduler from a diffusers config ---------------------------------------------

# canonical name -> (class, config class, diffusers class name)
_FAMILIES = {
    "euler": (EulerDiscrete, EulerConfig, "EulerDiscreteScheduler"),
    "euler_a": (EulerAncestralDiscrete, EulerAncestralConfig, "EulerAncestralDiscreteScheduler"),
    "ddim": (DDIM, DDIMConfig, "DDIMScheduler"),
    "dpm++": (DPMSolverMultistep, DPMSolverConfig, "DPMSolverMultistepScheduler"),
    "lcm": (LCM, LCMConfig, "LCMScheduler"),
    "flow_euler": (FlowMatchEulerDiscrete, FlowMatchEulerConfig, "FlowMatchEulerDiscreteScheduler"),
}


def _load_config(config: Union[Mapping[str, Any], str, os.PathLike, None]) -> Mapping[str, Any]:
    if config is None:
        return {}
    if isinstance(config, (str, os.PathLike)):
        with open(config, "r", encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise ValueError("config must be a dict (scheduler_config.json content) or a path, "
                         f"got {type(config).__name__}.")
    return config


def make_scheduler(
    config: Union[Mapping[str, Any], str, os.PathLike, None], name: Optional[str] = None, **overrides: Any
) -> Scheduler:
    """Build a scheduler from a diffusers scheduler config. This is the equivalent of
    ``<Class>.from_config(config, **overrides)``, including its handling of
    ``_use_default_values`` (see ``config_from_dict``).

    config:    the content of ``scheduler/scheduler_config.json`` (a dict, or ``dict(scheduler.config)``
               of a live diffusers scheduler), or a path to that file.
    name:      override the class: "euler", "euler_a", "ddim", "dpm++" / "dpmsolver++", "lcm",
               "flow_euler", or a diffusers class name; for a CogVideoX config "ddim" / "dpm"
               (the CogVideoX class names and "cogvideox_ddim" / "cogvideox_dpm" work for any config).
               Defaults to the config's ``_class_name``. Config keys the class does not know are
               ignored, as in diffusers.
    overrides: config fields to replace, for example ``use_karras_sigmas=True``.
    """
    config = _load_config(config)
    key = name if name is not None else config.get("_class_name")
    if str(config.get("_class_name", "")).startswith("CogVideoX") or (
            isinstance(key, str) and key.strip().lower().startswith("cogvideox")):
        # CogVideoX's own pair: "ddim" / "dpm" for a CogVideoX config, or the class names for any
        # (a live diffusers config, dict(scheduler.config), carries no _class_name)
        return make_cogvideox_scheduler(config, name=name, **overrides)
    if key is None:
        raise ValueError("The scheduler config has no '_class_name'; pass name= one of "
                         f"{', '.join(repr(k) for k in _FAMILIES)}.")
    cls, config_cls, family = _FAMILIES[canonical_scheduler_name(key)]
    return cls.from_config(config_from_dict(config_cls, family, config, overrides))


def make_cogvideox_scheduler(config: Mapping[str, Any], name: Optional[str] = None,
                             **overrides: Any) -> CogVideoXScheduler:
    """CogVideoXDDIMScheduler / CogVideoXDPMScheduler from a scheduler_config.json dict. ``name``
    overrides the class: "ddim" / "dpm" or the diffusers class names."""
    config = _load_config(config)
    key = name if name is not None else config.get("_class_name")
    if not isinstance(key, str) or key.strip().lower() not in COGVIDEOX_SCHEDULERS:
        raise ValueError(f"Unknown CogVideoX scheduler {key!r}. Supported: 'ddim' (CogVideoXDDIMScheduler), "
                         "'dpm' (CogVideoXDPMScheduler).")
    kind = COGVIDEOX_SCHEDULERS[key.strip().lower()]
    cfg = config_from_dict(CogVideoXSchedulerConfig, SCHEDULER_CLASS_NAMES[kind], config, overrides)
    return CogVideoXScheduler.from_config(kind, cfg)


# ----------------------------------------------------------------------------------------------
# 6. img2img / video2video helpers
# ----------------------------------------------------------------------------------------------


class TimestepNotInPlan(ValueError):
    """A timestep looked up in a schedule that does not hold it (diffusers: IndexError)."""


def _index_for_timestep(plan: Plan, t: Any) -> int:
    """diffusers' index_for_timestep: the second match if t occurs more than once, else the first;
    DPMSolverMultistepScheduler takes the last step for a timestep its schedule does not hold."""
    matches = np.flatnonzero(plan.timesteps == t)
    if len(matches) == 0 and isinstance(plan.scheduler, DPMSolverMultistep):
        return len(plan.timesteps) - 1
    if len(matches) == 0:
        raise TimestepNotInPlan(f"Timestep {t!r} is not in plan.timesteps {plan.timesteps.tolist()}; pass one of "
                         "them, or step_index=.")
    return int(matches[1] if len(matches) > 1 else matches[0])


def add_noise(
    plan_or_scheduler: Union[Plan, Scheduler],
    original: np.ndarray,
    noise: np.ndarray,
    timestep: Any = None,
    *,
    step_index: Any = None,
) -> np.ndarray:
    """Noise ``original`` (clean latents, batch first) to a level of the schedule: the forward
    process x = alpha original + sigma noise, as diffusers' ``scheduler.add_noise`` (and, for flow
    matching, ``scheduler.scale_noise``) computes it.

    Give exactly one of the following (a scalar, or one value per batch element):
    timestep:   a value from ``plan.timesteps``. diffusers without ``set_begin_index`` looks the
                value up (Euler / DPM++ / flow) or indexes alpha_bar with it (DDIM / LCM / CogVideoX).
    step_index: an index into ``plan.timesteps``. This equals diffusers after
                ``set_begin_index(step_index)``, which the img2img / video2video pipelines call.

    Euler:   original + sigma * noise
    VP:      sqrt(alpha_bar_t) original + sqrt(1 - alpha_bar_t) noise (DDIM, LCM, CogVideoX; their
             scheduler may be passed instead of a plan, with ``timestep``)
    DPM++:   alpha_t original + sigma_t noise, with alpha_t = 1 / sqrt(sigma^2 + 1)
    flow:    (1 - sigma) original + sigma noise
    """
    if (timestep is None) == (step_index is None):
        raise ValueError("add_noise needs exactly one of timestep= or step_index=.")
    original = np.asarray(original)
    noise = np.asarray(noise)
    if original.shape != noise.shape:
        raise ValueError(f"noise shape {noise.shape} does not match original shape {original.shape}.")
    dtype = original.dtype if np.issubdtype(original.dtype, np.floating) else np.dtype(np.float32)

    if isinstance(plan_or_scheduler, Plan):
        plan, sched = plan_or_scheduler, plan_or_scheduler.scheduler
    elif isinstance(plan_or_scheduler, Scheduler):
        plan, sched = None, plan_or_scheduler
        if not isinstance(sched, _VPTable) or step_index is not None:
            raise ValueError(f"add_noise for {sched.name!r} needs a Plan (from set_timesteps): its noise level "
                             "depends on the inference schedule. Only DDIM / LCM / CogVideoX with timestep= work "
                             "from the scheduler.")
    else:
        raise ValueError(f"add_noise needs a Plan or a scheduler, got {type(plan_or_scheduler).__name__}.")

    def per_batch(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values).reshape(-1)
        return values.reshape(-1, *([1] * (original.ndim - 1))) if original.ndim else values

    idx = ts = None
    if step_index is not None:
        idx = np.atleast_1d(np.asarray(step_index))
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(plan.timesteps):
            raise ValueError(f"step_index must be integer(s) in [0, {len(plan.timesteps) - 1}], got {step_index!r}.")
    else:
        ts = np.atleast_1d(np.asarray(timestep))
        if not isinstance(sched, _VPTable):
            idx = np.array([_index_for_timestep(plan, t) for t in ts])
    alpha, sigma = sched._noise_levels(plan, idx, ts, np.dtype(dtype))
    return per_batch(alpha) * original + per_batch(sigma) * noise


def scale_noise(plan: Plan, sample: np.ndarray, noise: np.ndarray, timestep: Any = None, *,
                step_index: Any = None) -> np.ndarray:
    """Flow matching's forward process (diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise``):
    (1 - sigma) sample + sigma noise at a plan index or timestep. Used for flow-matching
    img2img / video2video start latents and conditioning noise."""
    if not isinstance(plan, Plan) or not isinstance(plan.scheduler, FlowMatchEulerDiscrete):
        raise ValueError("scale_noise needs a Plan of a flow-matching scheduler; use add_noise for the others.")
    return add_noise(plan, sample, noise, timestep, step_index=step_index)


def get_timesteps_for_strength(plan: Plan, strength: float) -> Tuple[int, np.ndarray]:
    """The img2img / video2video ``get_timesteps``: skip the first (1 - strength) of the schedule.

    Returns (t_start, plan.timesteps[t_start:]). Run the loop as ``for i in range(t_start, len(plan))``
    with the start latents ``add_noise(plan, latents, noise, step_index=t_start)``. This is what
    diffusers does after ``scheduler.set_begin_index(t_start)``.
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0.0, 1.0], got {strength}.")
    n = plan.num_inference_steps
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    if t_start >= len(plan.timesteps):
        raise ValueError(f"strength={strength} with num_inference_steps={n} leaves no denoising step; "
                         f"use strength >= {1.0 / n:.4g} or more steps.")
    return t_start, plan.timesteps[t_start:]
