"""Numpy diffusion schedulers that reproduce HF diffusers step for step.

Three families are covered: ``EulerDiscreteScheduler`` ("euler"), ``DDIMScheduler`` ("ddim") and
``DPMSolverMultistepScheduler`` ("dpm++"). The file is laid out k-diffusion style:

1. Configs: one frozen dataclass per family. Every field and default is spelled out as in the
   diffusers ``__init__``.
2. The training noise schedule, as plain functions returning arrays (betas, alphas_cumprod, sigmas).
3. Model-output wrappers. ``denoised_from_*`` read an eps / v / sample prediction and return
   ``denoised``, so no update rule branches on the model type.
4. Update rules, as plain functions of arrays: ``euler_update``, ``ddim_update`` and
   ``dpm_solver_pp_update``.
5. Scheduler objects. They build a ``Plan`` (the arrays for one sampling run) and step it.
   Multistep history is explicit state: it is passed into ``step`` and returned from it, never
   kept on the object.

Typical loop::

    sched = make_scheduler(config)                  # config: scheduler_config.json as a dict
    plan = sched.set_timesteps(25)
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
roots, and its last entries agree only to ~1e-5.

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
from typing import Any, ClassVar, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "SCHEDULER_ALIASES",
    "DIFFUSERS_CLASS_NAMES",
    "EulerConfig",
    "DDIMConfig",
    "DPMSolverConfig",
    "Plan",
    "MultistepState",
    "EulerDiscrete",
    "DDIM",
    "DPMSolverMultistep",
    "make_scheduler",
    "canonical_scheduler_name",
    "add_noise",
    "get_timesteps_for_strength",
    "torch_linspace_f32",
    "betas_for_alpha_bar",
    "rescale_zero_terminal_snr",
    "make_betas",
    "cumprod_f32",
    "training_sigmas",
    "get_sigmas_karras",
    "sigma_to_t",
    "vp_alpha_sigma",
    "denoised_from_ve_output",
    "denoised_from_vp_output",
    "euler_update",
    "ddim_update",
    "dpm_solver_pp_update",
]

F32 = np.float32

# Accepted names (lower-cased) -> canonical name. diffusers class names are accepted too.
SCHEDULER_ALIASES = {
    "euler": "euler",
    "euler_discrete": "euler",
    "eulerdiscretescheduler": "euler",
    "ddim": "ddim",
    "ddimscheduler": "ddim",
    "dpm++": "dpm++",
    "dpmsolver++": "dpm++",
    "dpm++2m": "dpm++",
    "dpmsolvermultistepscheduler": "dpm++",
}
DIFFUSERS_CLASS_NAMES = {
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def canonical_scheduler_name(name: str) -> str:
    """Map a user-facing name or a diffusers class name to "euler", "ddim" or "dpm++"."""
    if not isinstance(name, str) or name.strip().lower() not in SCHEDULER_ALIASES:
        choices = sorted({"euler", "ddim", "dpm++", "dpmsolver++", *DIFFUSERS_CLASS_NAMES.values()})
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


def _common_checks(config: Any, family: str) -> None:
    if config.trained_betas is None:
        _choice("beta_schedule", config.beta_schedule, BETA_SCHEDULES, family)
    if config.num_train_timesteps < 2:
        raise ValueError(f"{family}: num_train_timesteps must be >= 2, got {config.num_train_timesteps}.")
    _choice("timestep_spacing", config.timestep_spacing, TIMESTEP_SPACINGS, family)


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
        _choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"), family)
        _choice("interpolation_type", self.interpolation_type, ("linear",), family)
        _choice("timestep_type", self.timestep_type, ("discrete", "continuous"), family)
        _choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES, family)
        _must_be_off("use_exponential_sigmas", self.use_exponential_sigmas, family)
        _must_be_off("use_beta_sigmas", self.use_beta_sigmas, family)


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
        family = "DDIMScheduler"
        _common_checks(self, family)
        _choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"), family)
        if self.thresholding:
            raise NotImplementedError(
                "DDIMScheduler: thresholding=True (dynamic thresholding, Imagen-style) is not implemented "
                "in the numpy runtime. Use thresholding=False; clip_sample/clip_sample_range are supported."
            )


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
        _choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"), family)
        _choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES, family)
        _choice("variance_type", self.variance_type, (None,), family)
        for name in ("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                     "use_dynamic_shifting"):
            _must_be_off(name, getattr(self, name), family)
        if self.thresholding:
            raise NotImplementedError(
                "DPMSolverMultistepScheduler: thresholding=True (dynamic thresholding) is not implemented "
                "in the numpy runtime. Use thresholding=False."
            )


def _config_from_dict(cls, family: str, config: Mapping[str, Any], overrides: Mapping[str, Any]):
    """Build a config the way diffusers' ``from_config`` does.

    Keys the family does not know are ignored. Snapshot configs routinely carry keys for other
    schedulers, such as ``clip_sample`` in the SVD Euler config. An unknown *override* is an
    error, because that is a typo by the caller.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{family} has no config field(s) {unknown}. Known fields: {', '.join(sorted(names))}.")
    values = {k: v for k, v in dict(config).items() if k in names}
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
# 2. Training noise schedule (plain functions of arrays)
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


def make_betas(config: Union[EulerConfig, DDIMConfig, DPMSolverConfig]) -> np.ndarray:
    """Training betas (float32, length num_train_timesteps) as the diffusers constructors build them."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
        if betas.shape != (n,):
            raise ValueError(f"trained_betas has {betas.size} entries but num_train_timesteps={n}.")
    elif config.beta_schedule == "linear":
        betas = torch_linspace_f32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":
        root = torch_linspace_f32(config.beta_start**0.5, config.beta_end**0.5, n)
        betas = root * root
    elif config.beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n)
    else:
        raise ValueError(
            f"beta_schedule={config.beta_schedule!r} is not supported. Supported: {', '.join(BETA_SCHEDULES)}."
        )
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) in float32, ascending in t."""
    return np.sqrt((F32(1.0) - alphas_cumprod) / alphas_cumprod)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) sigmas, float64, descending, without the final zero."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho = float(sigma_min) ** (1 / rho)
    max_inv_rho = float(sigma_max) ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


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


def _log_f32(x):
    """float32 log, rounded once from float64 (torch's float32 log may differ by 1 ulp)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)


def _exp_f32(x):
    return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)


def _inference_timesteps(spacing: str, num_train: int, n: int, steps_offset: int) -> np.ndarray:
    """Float64 timesteps shared by Euler ("leading"/"trailing") and DDIM, before dtype casts."""
    if spacing == "leading":
        step_ratio = num_train // n
        return (np.arange(0, n) * step_ratio).round()[::-1].copy() + steps_offset
    if spacing == "trailing":
        step_ratio = num_train / n
        return np.arange(num_train, 0, -step_ratio).round().copy() - 1
    raise AssertionError(spacing)


def _check_num_steps(n: Any, num_train: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= num_train:
        raise ValueError(f"num_inference_steps must be an integer in [1, {num_train}], got {n!r}.")
    return int(n)


# ----------------------------------------------------------------------------------------------
# 3. Model output -> denoised
# ----------------------------------------------------------------------------------------------


def denoised_from_ve_output(prediction_type: str, model_output: np.ndarray, x: np.ndarray, sigma) -> np.ndarray:
    """Denoised sample for the variance-exploding parameterisation x = x0 + sigma * eps (Euler)."""
    sigma = F32(sigma)
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        c_out = -sigma / np.sqrt(sigma * sigma + F32(1))
        return model_output * c_out + x / (sigma * sigma + F32(1))
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type={prediction_type!r}; supported: 'epsilon', 'v_prediction', 'sample'.")


def denoised_from_vp_output(
    prediction_type: str, model_output: np.ndarray, x: np.ndarray, alpha_t, sigma_t
) -> Tuple[np.ndarray, np.ndarray]:
    """(denoised, eps) for the variance-preserving parameterisation x = alpha_t x0 + sigma_t eps.

    Used by DDIM (alpha_t = sqrt(alpha_bar)) and DPM-Solver++ (alpha_t = 1/sqrt(sigma^2+1)).
    """
    alpha_t, sigma_t = F32(alpha_t), F32(sigma_t)
    if prediction_type == "epsilon":
        denoised = (x - sigma_t * model_output) / alpha_t
        eps = model_output
    elif prediction_type == "sample":
        denoised = model_output
        eps = (x - alpha_t * denoised) / sigma_t
    elif prediction_type == "v_prediction":
        denoised = alpha_t * x - sigma_t * model_output
        eps = alpha_t * model_output + sigma_t * x
    else:
        raise ValueError(f"prediction_type={prediction_type!r}; supported: 'epsilon', 'v_prediction', 'sample'.")
    return denoised, eps


def vp_alpha_sigma(sigma):
    """(alpha_t, sigma_t) of a VE sigma: alpha_t = 1/sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t."""
    sigma = np.asarray(sigma, dtype=np.float32)
    alpha_t = F32(1) / np.sqrt(sigma * sigma + F32(1))
    return alpha_t, sigma * alpha_t


# ----------------------------------------------------------------------------------------------
# 4. Update rules (plain functions of arrays)
# ----------------------------------------------------------------------------------------------


def euler_update(x: np.ndarray, denoised: np.ndarray, sigma, sigma_next) -> np.ndarray:
    """One Euler step of dx/dsigma = (x - denoised) / sigma, from sigma to sigma_next."""
    sigma, sigma_next = F32(sigma), F32(sigma_next)
    derivative = (x - denoised) / sigma
    return x + derivative * (sigma_next - sigma)


def ddim_update(denoised, eps, alpha_bar_prev, std_dev_t, noise: Optional[np.ndarray] = None) -> np.ndarray:
    """DDIM: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps (+ std * noise)."""
    alpha_bar_prev, std_dev_t = F32(alpha_bar_prev), F32(std_dev_t)
    direction = np.sqrt(F32(1) - alpha_bar_prev - std_dev_t * std_dev_t) * eps
    x_prev = np.sqrt(alpha_bar_prev) * denoised + direction
    if noise is not None:
        x_prev = x_prev + std_dev_t * noise
    return x_prev


def dpm_solver_pp_update(
    x: np.ndarray, denoised: Sequence[np.ndarray], sigmas: Sequence[float], solver_type: str = "midpoint"
) -> np.ndarray:
    """Multistep DPM-Solver++ update of order ``len(denoised)`` (1, 2 or 3).

    denoised: the model's denoised predictions at the last k steps, oldest first.
    sigmas:   the k sigmas those predictions were made at (oldest first), then the target sigma.
    """
    order = len(denoised)
    if order not in (1, 2, 3) or len(sigmas) != order + 1:
        raise ValueError(f"dpm_solver_pp_update needs 1-3 denoised values and one more sigma; "
                         f"got {order} and {len(sigmas)}.")
    alphas, sig = vp_alpha_sigma(np.asarray(sigmas, dtype=np.float32))
    lambdas = _log_f32(alphas) - _log_f32(sig)  # log-SNR; +inf at sigma = 0
    alpha_t, sigma_t, lambda_t = alphas[-1], sig[-1], lambdas[-1]
    sigma_s0, lambda_s0 = sig[-2], lambdas[-2]
    with np.errstate(over="ignore", invalid="ignore"):
        h = lambda_t - lambda_s0
        exp_m1 = _exp_f32(-h) - F32(1.0)  # exp(-h) - 1
    m0 = denoised[-1]
    x_t = (sigma_t / sigma_s0) * x - (alpha_t * exp_m1) * m0
    if order == 1:
        return x_t
    m1 = denoised[-2]
    lambda_s1 = lambdas[-3]
    r0 = (lambda_s0 - lambda_s1) / h
    d1_0 = (F32(1.0) / r0) * (m0 - m1)
    if order == 2:
        if solver_type == "midpoint":
            return x_t - (F32(0.5) * (alpha_t * exp_m1)) * d1_0
        if solver_type == "heun":
            return x_t + (alpha_t * (exp_m1 / h + F32(1.0))) * d1_0
        raise ValueError(f"solver_type={solver_type!r}; supported: 'midpoint', 'heun'.")
    m2 = denoised[-3]
    lambda_s2 = lambdas[-4]
    r1 = (lambda_s1 - lambda_s2) / h
    d1_1 = (F32(1.0) / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (F32(1.0) / (r0 + r1)) * (d1_0 - d1_1)
    return (
        x_t
        + (alpha_t * (exp_m1 / h + F32(1.0))) * d1
        - (alpha_t * ((exp_m1 + h) / (h * h) - F32(0.5))) * d2
    )


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

    timesteps:           (N,) what the network sees as ``t``. float32 for Euler (continuous log-sigma
                         values for SVD), int64 for DDIM and DPM++.
    sigmas:              (N+1,) float32, Euler and DPM++ only; the last entry is the final sigma.
    alphas_cumprod:      (N,) float32 alpha_bar at timesteps[i], DDIM only.
    alphas_cumprod_prev: (N,) float32 alpha_bar the DDIM step i lands on.
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
    """DPM-Solver++ history: the denoised predictions of the previous steps (oldest first).

    step_index is the plan index of the step that produced the newest entry. ``step`` checks it,
    so a stale or foreign state fails loudly.
    """

    step_index: int
    denoised: Tuple[np.ndarray, ...]


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


def _check_same_shape(x: np.ndarray, model_output: np.ndarray) -> None:
    if np.shape(x) != np.shape(model_output):
        raise ValueError(f"model_output shape {np.shape(model_output)} does not match sample shape {np.shape(x)}.")


class Scheduler:
    """Common interface; see EulerDiscrete, DDIM and DPMSolverMultistep."""

    name: ClassVar[str]
    config: Any
    alphas_cumprod: np.ndarray

    def set_timesteps(self, num_inference_steps: int) -> Plan:  # pragma: no cover - interface
        raise NotImplementedError

    def scale_model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray:
        _check_index(plan, i, self)
        return x


@dataclass(frozen=True, eq=False)
class EulerDiscrete(Scheduler):
    """diffusers ``EulerDiscreteScheduler`` (s_churn = 0 path)."""

    name: ClassVar[str] = "euler"
    config: EulerConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @classmethod
    def from_config(cls, config: EulerConfig) -> "EulerDiscrete":
        config.validate()
        betas = make_betas(config)
        alphas_cumprod = cumprod_f32(F32(1.0) - betas)
        if config.rescale_betas_zero_snr:
            alphas_cumprod[-1] = F32(2.0**-24)  # keeps the terminal sigma finite
        return cls(config=config, betas=_readonly(betas), alphas_cumprod=_readonly(alphas_cumprod))

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        config = self.config
        T = config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)

        # 1. timesteps on the training grid
        if config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        else:
            timesteps = _inference_timesteps(config.timestep_spacing, T, n, config.steps_offset)
            timesteps = timesteps.astype(np.float32)

        # 2. sigmas at those timesteps (float64), optionally replaced by Karras sigmas
        train_sigmas = training_sigmas(self.alphas_cumprod)
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
        return Plan(self, n, _readonly(timesteps), F32(init_noise_sigma), sigmas=_readonly(sigmas))

    def scale_model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray:
        """x / sqrt(sigma_i^2 + 1)."""
        i = _check_index(plan, i, self)
        sigma = plan.sigmas[i]
        return x / np.sqrt(sigma * sigma + F32(1))

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, None]:
        """Deterministic Euler step (diffusers' default s_churn=0); ``generator`` is unused.

        The result is cast back to model_output's dtype, as diffusers does.
        """
        i = _check_index(plan, i, self)
        _check_same_shape(x, model_output)
        out_dtype = np.asarray(model_output).dtype
        x = _as_f32(x, "sample")
        model_output = _as_f32(model_output, "model_output")
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        denoised = denoised_from_ve_output(self.config.prediction_type, model_output, x, sigma)
        return euler_update(x, denoised, sigma, sigma_next).astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class DDIM(Scheduler):
    """diffusers ``DDIMScheduler``."""

    name: ClassVar[str] = "ddim"
    config: DDIMConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    final_alpha_cumprod: np.float32

    @classmethod
    def from_config(cls, config: DDIMConfig) -> "DDIM":
        config.validate()
        betas = make_betas(config)
        alphas_cumprod = cumprod_f32(F32(1.0) - betas)
        final = F32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
        return cls(config=config, betas=_readonly(betas), alphas_cumprod=_readonly(alphas_cumprod),
                   final_alpha_cumprod=F32(final))

    def set_timesteps(self, num_inference_steps: int) -> Plan:
        config = self.config
        T = config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)
        if config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        else:
            timesteps = _inference_timesteps(config.timestep_spacing, T, n, config.steps_offset).astype(np.int64)
        if timesteps.max() >= T or timesteps.min() < 0:
            raise ValueError(f"DDIM timesteps {timesteps.tolist()} fall outside [0, {T - 1}] "
                             f"(steps_offset={config.steps_offset}); use fewer steps.")
        # diffusers steps from t to t - T // n whatever the spacing; below 0 lands on final_alpha_cumprod
        prev = timesteps - T // n
        alphas_prev = np.where(prev >= 0, self.alphas_cumprod[np.clip(prev, 0, None)], self.final_alpha_cumprod)
        return Plan(self, n, _readonly(timesteps), F32(1.0),
                    alphas_cumprod=_readonly(self.alphas_cumprod[timesteps]),
                    alphas_cumprod_prev=_readonly(alphas_prev.astype(np.float32)))

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray, state: None = None, *,
             eta: float = 0.0, generator: Optional[np.random.Generator] = None,
             variance_noise: Optional[np.ndarray] = None) -> Tuple[np.ndarray, None]:
        """One DDIM step. With eta > 0, noise comes from ``variance_noise``, or else is drawn from
        ``generator`` (a caller-seeded ``np.random.Generator``) as float32 standard normals."""
        i = _check_index(plan, i, self)
        _check_same_shape(x, model_output)
        config = self.config
        out_dtype = np.result_type(np.asarray(x).dtype, np.asarray(model_output).dtype)
        x = _as_f32(x, "sample")
        model_output = _as_f32(model_output, "model_output")
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0 = DDIM, 1 = DDPM-like), got {eta}.")

        alpha_bar = plan.alphas_cumprod[i]
        alpha_bar_prev = plan.alphas_cumprod_prev[i]
        beta_bar = F32(1) - alpha_bar
        denoised, eps = denoised_from_vp_output(
            config.prediction_type, model_output, x, np.sqrt(alpha_bar), np.sqrt(beta_bar)
        )
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
        x_prev = ddim_update(denoised, eps, alpha_bar_prev, std_dev_t, noise)
        return x_prev.astype(out_dtype, copy=False), None


@dataclass(frozen=True, eq=False)
class DPMSolverMultistep(Scheduler):
    """diffusers ``DPMSolverMultistepScheduler`` (algorithm_type "dpmsolver++", orders 1-3)."""

    name: ClassVar[str] = "dpm++"
    config: DPMSolverConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @classmethod
    def from_config(cls, config: DPMSolverConfig) -> "DPMSolverMultistep":
        config.validate()
        betas = make_betas(config)
        alphas_cumprod = cumprod_f32(F32(1.0) - betas)
        if config.rescale_betas_zero_snr:
            alphas_cumprod[-1] = F32(2.0**-24)
        return cls(config=config, betas=_readonly(betas), alphas_cumprod=_readonly(alphas_cumprod))

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

    def step(self, plan: Plan, i: int, x: np.ndarray, model_output: np.ndarray,
             state: Optional[MultistepState] = None, *,
             generator: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, MultistepState]:
        """One multistep DPM-Solver++ step. ``state`` is what the previous step returned, or None
        at the first step (also after a restart: the first step is first order). ``generator`` is
        unused (the ODE solver is deterministic)."""
        i = _check_index(plan, i, self)
        _check_same_shape(x, model_output)
        config = self.config
        if state is None:
            history: Tuple[np.ndarray, ...] = ()
        elif not isinstance(state, MultistepState):
            raise ValueError(f"state must be None or the MultistepState returned by the previous step, "
                             f"got {type(state).__name__}.")
        elif state.step_index != i - 1:
            raise ValueError(f"DPM-Solver++ state comes from step {state.step_index}, but this is step {i}. "
                             "Pass the state returned by the previous step (or None to restart).")
        else:
            history = state.denoised
        out_dtype = np.asarray(model_output).dtype
        x = _as_f32(x, "sample")
        model_output = _as_f32(model_output, "model_output")

        n = len(plan.timesteps)
        lower_order_final = (i == n - 1) and (
            config.euler_at_final or (config.lower_order_final and n < 15) or config.final_sigmas_type == "zero"
        )
        lower_order_second = (i == n - 2) and config.lower_order_final and n < 15

        alpha_s, sigma_s = vp_alpha_sigma(plan.sigmas[i])
        denoised, _ = denoised_from_vp_output(config.prediction_type, model_output, x, alpha_s, sigma_s)

        if config.solver_order == 1 or len(history) < 1 or lower_order_final:
            order = 1
        elif config.solver_order == 2 or len(history) < 2 or lower_order_second:
            order = 2
        else:
            order = 3
        outputs = (*history, denoised)
        x_next = dpm_solver_pp_update(x, outputs[-order:], plan.sigmas[i + 1 - order: i + 2], config.solver_type)

        keep = config.solver_order - 1
        new_state = MultistepState(step_index=i, denoised=outputs[-keep:] if keep > 0 else ())
        return x_next.astype(out_dtype, copy=False), new_state


_FAMILIES = {
    "euler": (EulerDiscrete, EulerConfig, "EulerDiscreteScheduler"),
    "ddim": (DDIM, DDIMConfig, "DDIMScheduler"),
    "dpm++": (DPMSolverMultistep, DPMSolverConfig, "DPMSolverMultistepScheduler"),
}


def make_scheduler(
    config: Union[Mapping[str, Any], str, os.PathLike, None], name: Optional[str] = None, **overrides: Any
) -> Union[EulerDiscrete, DDIM, DPMSolverMultistep]:
    """Build a scheduler from a diffusers scheduler config. This is the equivalent of
    ``<Class>.from_config(config, **overrides)``.

    config:    the content of ``scheduler/scheduler_config.json`` (a dict), or a path to that file.
    name:      override the family: "euler", "ddim", "dpm++" / "dpmsolver++", or a diffusers class
               name. Defaults to the config's ``_class_name``. Config keys the family does not
               know are ignored, as in diffusers.
    overrides: config fields to replace, for example ``use_karras_sigmas=True``.
    """
    if config is None:
        config = {}
    elif isinstance(config, (str, os.PathLike)):
        with open(config, "r", encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise ValueError("config must be a dict (scheduler_config.json content) or a path, "
                         f"got {type(config).__name__}.")
    if str(config.get("_class_name", "")).startswith("CogVideoX"):
        # CogVideoX snapshots: their own DDIM / DPM pair (name= "ddim" or "dpm"), see section 7
        return make_cogvideox_scheduler(config, name=name, **overrides)
    key = name if name is not None else config.get("_class_name")
    if key is None:
        raise ValueError("The scheduler config has no '_class_name'; pass name= one of "
                         "'euler', 'ddim', 'dpm++'.")
    cls, config_cls, family = _FAMILIES[canonical_scheduler_name(key)]
    return cls.from_config(_config_from_dict(config_cls, family, config, overrides))


# ----------------------------------------------------------------------------------------------
# 6. img2img / video2video helpers
# ----------------------------------------------------------------------------------------------


def _index_for_timestep(plan: Plan, t: Any) -> int:
    """diffusers' index_for_timestep: the second match if t occurs more than once, else the first."""
    matches = np.flatnonzero(plan.timesteps == t)
    if len(matches) == 0:
        raise ValueError(f"Timestep {t!r} is not in plan.timesteps {plan.timesteps.tolist()}; pass one of "
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
    """Noise ``original`` (clean latents, batch first) to a level of the schedule, as diffusers'
    ``scheduler.add_noise`` does.

    Give exactly one of the following (a scalar, or one value per batch element):
    timestep:   a value from ``plan.timesteps``. diffusers without ``set_begin_index`` looks the
                value up (Euler / DPM++) or indexes alpha_bar with it (DDIM).
    step_index: an index into ``plan.timesteps``. This equals diffusers after
                ``set_begin_index(step_index)``, which the img2img / video2video pipelines call.

    Euler:  original + sigma * noise
    DDIM:   sqrt(alpha_bar_t) original + sqrt(1 - alpha_bar_t) noise  (a DDIM scheduler may be
            passed instead of a plan, with ``timestep``)
    DPM++:  alpha_t original + sigma_t noise, with alpha_t = 1 / sqrt(sigma^2 + 1)
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
        if sched.name != "ddim" or step_index is not None:
            raise ValueError(f"add_noise for {sched.name!r} needs a Plan (from set_timesteps): its noise level "
                             "depends on the inference sigmas. Only DDIM with timestep= works from the scheduler.")
    else:
        raise ValueError(f"add_noise needs a Plan or a scheduler, got {type(plan_or_scheduler).__name__}.")

    def per_batch(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values).reshape(-1)
        return values.reshape(-1, *([1] * (original.ndim - 1))) if original.ndim else values

    if step_index is not None:
        idx = np.atleast_1d(np.asarray(step_index))
        if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(plan.timesteps):
            raise ValueError(f"step_index must be integer(s) in [0, {len(plan.timesteps) - 1}], got {step_index!r}.")
    else:
        ts = np.atleast_1d(np.asarray(timestep))
        idx = None if sched.name == "ddim" else np.array([_index_for_timestep(plan, t) for t in ts])

    if sched.name == "ddim":
        t = plan.timesteps[idx] if idx is not None else ts.astype(np.int64)
        if t.min() < 0 or t.max() >= len(sched.alphas_cumprod):
            raise ValueError(f"DDIM timestep(s) {t.tolist()} outside [0, {len(sched.alphas_cumprod) - 1}].")
        alpha_bar = sched.alphas_cumprod.astype(dtype)[t]
        sqrt_alpha = per_batch(np.sqrt(alpha_bar))
        sqrt_one_minus = per_batch(np.sqrt(dtype.type(1) - alpha_bar))
        return sqrt_alpha * original + sqrt_one_minus * noise
    sigma = plan.sigmas.astype(dtype)[idx]
    if sched.name == "euler":
        return original + noise * per_batch(sigma)
    alpha_t = dtype.type(1) / np.sqrt(sigma * sigma + dtype.type(1))
    return per_batch(alpha_t) * original + per_batch(sigma * alpha_t) * noise


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


# ----------------------------------------------------------------------------------------------
# 7. CogVideoX schedulers: CogVideoXDDIMScheduler and CogVideoXDPMScheduler
# ----------------------------------------------------------------------------------------------
# Both share one config and one training schedule: alpha_bar shifted by ``snr_shift_scale``
# (alpha_bar / (s + (1 - s) alpha_bar)), optionally rescaled to zero terminal SNR. diffusers builds
# the scaled_linear schedule in float64 (the linear one in float32) and does the per-step scalar
# arithmetic in that dtype; the scalars meet the float32 latents as float32. This is mirrored here.
# The DPM variant is stochastic: it draws fresh noise every step (twice on second-order steps),
# in the order diffusers draws it, from the caller's numpy generator.

COGVIDEOX_SCHEDULERS = {
    # accepted names (lower-cased) -> canonical
    "cogvideox_ddim": "cogvideox_ddim", "cogvideoxddimscheduler": "cogvideox_ddim", "ddim": "cogvideox_ddim",
    "cogvideox_dpm": "cogvideox_dpm", "cogvideoxdpmscheduler": "cogvideox_dpm", "dpm": "cogvideox_dpm",
}


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
        family = "CogVideoXScheduler"
        _common_checks(self, family)
        _choice("prediction_type", self.prediction_type, ("epsilon", "v_prediction", "sample"), family)


def cogvideox_alphas_cumprod(config: CogVideoXSchedulerConfig) -> np.ndarray:
    """The shifted (and optionally zero-terminal-SNR rescaled) alpha_bar, in diffusers' dtype:
    float64 for scaled_linear, float32 otherwise."""
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = np.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, T, dtype=np.float64) ** 2
    elif config.beta_schedule == "linear":
        betas = torch_linspace_f32(config.beta_start, config.beta_end, T)
    else:
        betas = betas_for_alpha_bar(T)
    dtype = betas.dtype.type
    alphas = dtype(1.0) - betas
    if dtype is np.float64:
        alphas_cumprod = np.cumprod(alphas)
    else:
        alphas_cumprod = cumprod_f32(alphas)
    s = dtype(config.snr_shift_scale)
    alphas_cumprod = (alphas_cumprod / (s + (dtype(1) - s) * alphas_cumprod)).astype(dtype)
    if config.rescale_betas_zero_snr:
        sqrt = np.sqrt(alphas_cumprod)
        first, last = sqrt[0], sqrt[-1]
        sqrt = (sqrt - last) * (first / (first - last))
        alphas_cumprod = (sqrt * sqrt).astype(dtype)
    return alphas_cumprod


@dataclass(frozen=True, eq=False)
class CogVideoXPlan:
    """timesteps (int64) for one run; ``prev_timesteps[i]`` = t_i - T // n (diffusers' step target;
    negative means final_alpha_cumprod)."""

    scheduler: "CogVideoXScheduler"
    num_inference_steps: int
    timesteps: np.ndarray
    init_noise_sigma: np.float32 = F32(1.0)

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True, eq=False)
class CogVideoXScheduler:
    """``kind`` "cogvideox_ddim" (deterministic DDIM, eta ignored as in diffusers' math) or
    "cogvideox_dpm" (CogVideoX's stochastic DPM-Solver++(2M)). ``step`` returns
    (prev_sample, denoised); pass ``denoised`` back as ``old_denoised`` to the next DPM step."""

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

    def set_timesteps(self, num_inference_steps: int) -> CogVideoXPlan:
        config = self.config
        T = config.num_train_timesteps
        n = _check_num_steps(num_inference_steps, T)
        if config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif config.timestep_spacing == "leading":
            timesteps = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + config.steps_offset
        else:  # trailing
            timesteps = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        return CogVideoXPlan(self, n, _readonly(timesteps))

    def scale_model_input(self, plan: CogVideoXPlan, i: int, x: np.ndarray) -> np.ndarray:
        return x

    def _alpha(self, t):
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def step(self, plan: CogVideoXPlan, i: int, x: np.ndarray, model_output: np.ndarray,
             old_denoised: Optional[np.ndarray] = None, *, generator: Optional[np.random.Generator] = None):
        n = len(plan.timesteps)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise ValueError(f"Step index must be an integer in [0, {n - 1}], got {i!r}.")
        _check_same_shape(x, model_output)
        x = _as_f32(x, "sample")
        model_output = _as_f32(model_output, "model_output")
        t = int(plan.timesteps[i])
        prev_t = t - self.config.num_train_timesteps // plan.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self._alpha(prev_t)
        one = a_t.dtype.type(1.0)
        b_t = one - a_t
        pt = self.config.prediction_type
        if pt == "epsilon":
            denoised = (x - F32(b_t ** 0.5) * model_output) / F32(a_t ** 0.5)
        elif pt == "sample":
            denoised = model_output
        else:  # v_prediction
            denoised = F32(a_t ** 0.5) * x - F32(b_t ** 0.5) * model_output
        if self.kind == "cogvideox_ddim":
            coef_x = ((one - a_prev) / (one - a_t)) ** 0.5
            coef_d = a_prev ** 0.5 - a_t ** 0.5 * coef_x
            return F32(coef_x) * x + F32(coef_d) * denoised, denoised

        # DPM-Solver++(2M), stochastic (CogVideoXDPMScheduler.step)
        if generator is None:
            raise ValueError("CogVideoXDPMScheduler adds noise every step: pass generator=np.random.default_rng(seed)")
        t_back = int(plan.timesteps[i - 1]) if i > 0 else None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lamb = np.log((a_t / (one - a_t)) ** 0.5)
            lamb_next = np.log((a_prev / (one - a_prev)) ** 0.5)
            h = lamb_next - lamb
            mult1 = ((one - a_prev) / (one - a_t)) ** 0.5 * np.exp(-h)
            mult2 = np.expm1(-2 * h) * a_prev ** 0.5
            mult_noise = (one - a_prev) ** 0.5 * (one - np.exp(-2 * h)) ** 0.5
        noise = generator.standard_normal(x.shape, dtype=np.float32)
        prev = F32(mult1) * x - F32(mult2) * denoised + F32(mult_noise) * noise
        if old_denoised is None or prev_t < 0:
            return prev, denoised
        a_back = self.alphas_cumprod[t_back]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lamb_previous = np.log((a_back / (one - a_back)) ** 0.5)
            r = (lamb - lamb_previous) / h
            mult3 = one + one / (2 * r)
            mult4 = one / (2 * r)
        denoised_d = F32(mult3) * denoised - F32(mult4) * old_denoised
        noise = generator.standard_normal(x.shape, dtype=np.float32)
        return F32(mult1) * x - F32(mult2) * denoised_d + F32(mult_noise) * noise, denoised

    def add_noise(self, plan: CogVideoXPlan, original: np.ndarray, noise: np.ndarray, step_index: int) -> np.ndarray:
        """diffusers ``add_noise`` at plan.timesteps[step_index]: alpha_bar cast to float32 first."""
        a = self.alphas_cumprod.astype(np.float32)[int(plan.timesteps[step_index])]
        return np.sqrt(a) * original + np.sqrt(F32(1) - a) * noise


def make_cogvideox_scheduler(config: Mapping[str, Any], name: Optional[str] = None,
                             **overrides: Any) -> CogVideoXScheduler:
    """CogVideoXDDIMScheduler / CogVideoXDPMScheduler from a scheduler_config.json dict. ``name``
    overrides the class: "ddim" / "dpm" or the diffusers class names."""
    key = name if name is not None else config.get("_class_name")
    if not isinstance(key, str) or key.strip().lower() not in COGVIDEOX_SCHEDULERS:
        raise ValueError(f"Unknown CogVideoX scheduler {key!r}. Supported: 'ddim' (CogVideoXDDIMScheduler), "
                         "'dpm' (CogVideoXDPMScheduler).")
    kind = COGVIDEOX_SCHEDULERS[key.strip().lower()]
    cfg = _config_from_dict(CogVideoXSchedulerConfig, "CogVideoXScheduler", config, overrides)
    return CogVideoXScheduler.from_config(kind, cfg)
