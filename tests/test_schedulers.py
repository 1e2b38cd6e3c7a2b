"""Parity of runtime/schedulers.py with the diffusers scheduler classes.

Every reference value comes from diffusers. Both loops start from the same random sample. Each
step feeds the same deterministic fake network, a numpy function of (model input, t), so the two
implementations differ only in their scheduler arithmetic.

Tolerances. The training schedule (betas, alphas_cumprod) is bit-exact. Sigmas, timesteps and
samples may differ by float32 ulps, because torch's CPU sqrt/log/exp are not correctly rounded
(torch gives sqrt(2**24 - 1) = 4096.0, for example), while numpy's are. Each step is checked twice,
both times at relative error <= 1e-6:

* local: diffusers' step on *our* current sample and model output versus our step. The error is
  taken relative to the larger magnitude of the step's input and output, because a float32 step
  whose output cancels its input cannot be more accurate than that. Zero-SNR Euler, for example,
  steps from sigma = 4096 down to ~1.
* trajectory: the two independent loops, relative to the largest magnitude the reference sample
  has reached so far. This is the scale at which float32 rounding happened along the way. One-ulp
  local differences random-walk over 50 steps.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402
from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from video_aot.runtime import schedulers as S  # noqa: E402



@pytest.fixture(autouse=True, scope="module")
def _quiet_diffusers():
    # from_config warns about keys meant for other schedulers; only while this module runs, so that
    # tests elsewhere still see diffusers' warnings (the t2v truncation test compares them)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(level)


# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json
SVD_CONFIG = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "sigma_max": 700.0, "sigma_min": 0.002,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
    "trained_betas": None, "use_karras_sigmas": True,
}
# Stable Diffusion 1.x scheduler/scheduler_config.json (a PNDM config, used with name overrides)
SD_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None, "clip_sample": False,
}
REFERENCE = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
STEP_COUNTS = [1, 2, 7, 25, 50]
RTOL = 1e-6
SHAPE = (1, 4, 3, 8, 8)  # batch, channels, frames, height, width

# (id, config, name, overrides, mode)
# mode "begin0": diffusers gets set_begin_index(0) (see the dpm-svd case).
# mode "shared": zero-SNR rescaling is ill-conditioned near t = T. Near the end,
#   alpha_bar_t = (sqrt_bar_t - sqrt_bar_T)^2 cancels, so torch's one-ulp sqrt differences grow to
#   ~1e-5 in the last alphas_cumprod. The schedule is then checked at rtol 1e-5, and diffusers
#   steps with *our* schedule, so the step arithmetic is still held to 1e-6.
CASES = [
    ("svd-euler", SVD_CONFIG, None, {}, None),
    ("euler-eps-linspace", SD_CONFIG, "euler", {"timestep_spacing": "linspace"}, None),
    ("euler-eps-leading", SD_CONFIG, "euler", {"timestep_spacing": "leading"}, None),
    ("euler-eps-trailing", SD_CONFIG, "euler", {"timestep_spacing": "trailing"}, None),
    ("euler-karras-final-sigma_min", SD_CONFIG, "euler",
     {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, None),
    ("euler-vpred-zero-snr-trailing", SD_CONFIG, "EulerDiscreteScheduler",
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "shared"),
    ("euler-sample-cosine", {}, "euler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"}, None),
    ("ddim-sd-eps", SD_CONFIG, "ddim", {}, None),
    ("ddim-sd-vpred", SD_CONFIG, "ddim", {"prediction_type": "v_prediction"}, None),
    ("ddim-zero-snr-trailing-vpred", SD_CONFIG, "DDIMScheduler",
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "shared"),
    ("ddim-defaults-clip", {}, "ddim", {}, None),
    ("ddim-linspace-sample-clip", SD_CONFIG, "ddim",
     {"timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8},
     None),
    ("dpm-defaults", {}, "dpm++", {}, None),
    ("dpm-sd", SD_CONFIG, "dpmsolver++", {}, None),
    ("dpm-sd-karras", SD_CONFIG, "dpm++", {"use_karras_sigmas": True}, None),
    ("dpm-heun", SD_CONFIG, "dpm++", {"solver_type": "heun"}, None),
    ("dpm-vpred-leading", SD_CONFIG, "DPMSolverMultistepScheduler",
     {"prediction_type": "v_prediction", "timestep_spacing": "leading"}, None),
    ("dpm-order3-trailing", SD_CONFIG, "dpm++", {"solver_order": 3, "timestep_spacing": "trailing"}, None),
    ("dpm-final-sigma_min-no-lower-order", SD_CONFIG, "dpm++",
     {"final_sigmas_type": "sigma_min", "lower_order_final": False}, None),
    # SVD config on DPM++: Karras with sigma_max=700 gives timesteps [999, 999, 999, ...]. diffusers'
    # timestep lookup would then start at index 1; the runtime uses the explicit index, which is
    # diffusers with set_begin_index(0).
    ("dpm-svd-karras-duplicate-t", SVD_CONFIG, "dpm++", {}, "begin0"),
    ("dpm-zero-snr-vpred-trailing", SD_CONFIG, "dpm++",
     {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "shared"),
]


def fake_network(x: np.ndarray, t) -> np.ndarray:
    """A smooth, t-dependent stand-in for a denoiser; contractive enough that the ODE stays tame."""
    x = np.asarray(x, dtype=np.float32)
    t = np.float32(t)
    out = np.float32(0.9) * x + np.float32(0.1) * np.tanh(np.float32(2) * x)
    return (out + np.float32(0.05) * np.cos(x + np.float32(0.003) * t)).astype(np.float32)


def rel_err(ours: np.ndarray, ref: np.ndarray, *scales: np.ndarray) -> float:
    """max |ours - ref| / max(|ref|, |each of scales|)."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = max([np.abs(ref).max()] + [float(np.abs(np.asarray(a, dtype=np.float64)).max()) for a in scales])
    return float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max() / max(scale, 1e-30))


def compare_loops(ours, plan, ref, x, x_ref, indices, ref_timesteps, step_kwargs=lambda i: ({}, {})):
    """Run our loop and the diffusers loop side by side and check every step (see module docstring).

    step_kwargs(i) -> (kwargs for our step, kwargs for diffusers' step).
    Returns the final samples.
    """
    state = None
    running_scale = float(np.abs(x_ref.numpy()).max())
    for i, t in zip(indices, ref_timesteps):
        ours_kwargs, ref_kwargs = step_kwargs(i)
        model_in = ours.scale_model_input(plan, i, x)
        model_out = fake_network(model_in, plan.timesteps[i])

        # local check: diffusers' step on our inputs (on a copy, diffusers' scheduler is stateful)
        local_ref = copy.deepcopy(ref)
        local_in = local_ref.scale_model_input(torch.from_numpy(x), t)
        assert rel_err(model_in, local_in.numpy()) <= RTOL, f"scale_model_input, step {i}"
        local_out = local_ref.step(torch.from_numpy(model_out), t, torch.from_numpy(x), **ref_kwargs).prev_sample

        x_in = x
        x, state = ours.step(plan, i, x, model_out, state, **ours_kwargs)
        assert x.dtype == np.float32
        err = rel_err(x, local_out.numpy(), x_in)
        assert err <= RTOL, f"step {i} on identical inputs: relative error {err:.3g}"

        # trajectory check: the independent diffusers loop
        model_in_ref = ref.scale_model_input(x_ref, t)
        out_ref = torch.from_numpy(fake_network(model_in_ref.numpy(), t.item()))
        x_ref = ref.step(out_ref, t, x_ref, **ref_kwargs).prev_sample
        running_scale = max(running_scale, float(np.abs(x_ref.numpy()).max()))
        err = float(np.abs(x - x_ref.numpy()).max()) / running_scale
        assert err <= RTOL, f"trajectory after step {i}: relative error {err:.3g}"
    return x, x_ref


def build(config, name, overrides):
    ours = S.make_scheduler(config, name, **overrides)
    ref = REFERENCE[ours.name].from_config(config, **overrides)
    return ours, ref


def check_plan(plan, ref, rtol=RTOL):
    ref_t = ref.timesteps.numpy()
    if ref_t.dtype == np.int64:
        assert plan.timesteps.dtype == np.int64
        np.testing.assert_array_equal(plan.timesteps, ref_t)
    else:
        assert plan.timesteps.dtype == np.float32
        np.testing.assert_allclose(plan.timesteps, ref_t, rtol=rtol, atol=1e-7)
    if plan.sigmas is not None:
        np.testing.assert_allclose(plan.sigmas, ref.sigmas.numpy(), rtol=rtol, atol=0)
    np.testing.assert_allclose(float(plan.init_noise_sigma), float(ref.init_noise_sigma), rtol=rtol)


def share_schedule(ours, plan, ref):
    """Make diffusers step with our (float32, ulp-different) schedule."""
    if ours.name == "ddim":
        ref.alphas_cumprod = torch.from_numpy(ours.alphas_cumprod.copy())
        ref.final_alpha_cumprod = torch.tensor(ours.final_alpha_cumprod)
    else:
        ref.sigmas = torch.from_numpy(plan.sigmas.copy())


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_diffusers(case, num_steps):
    _, config, name, overrides, mode = case
    ours, ref = build(config, name, overrides)
    plan = ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    if mode == "begin0":
        ref.set_begin_index(0)
    check_plan(plan, ref, rtol=1e-5 if mode == "shared" else RTOL)
    if mode == "shared":
        share_schedule(ours, plan, ref)

    sample = np.random.default_rng(num_steps).standard_normal(SHAPE).astype(np.float32)
    x = sample * plan.init_noise_sigma
    x_ref = torch.from_numpy(sample) * ref.init_noise_sigma
    np.testing.assert_allclose(x, x_ref.numpy(), rtol=RTOL)

    x, x_ref = compare_loops(ours, plan, ref, x, x_ref, range(len(plan.timesteps)), ref.timesteps)
    assert len(plan.timesteps) == len(ref.timesteps)
    assert rel_err(x, sample) > 1e-2  # the loop really moved the sample


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
def test_ddim_eta_with_seeded_generator(num_steps):
    ours, ref = build(SD_CONFIG, "ddim", {})
    plan = ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    sample = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    rng_ours = np.random.default_rng(1234)
    rng_ref = np.random.default_rng(1234)  # replays the same float32 normals for diffusers

    def step_kwargs(i):
        noise = rng_ref.standard_normal(SHAPE, dtype=np.float32)
        return {"eta": 0.5, "generator": rng_ours}, {"eta": 0.5, "variance_noise": torch.from_numpy(noise)}

    x, x_ref = compare_loops(ours, plan, ref, sample.copy(), torch.from_numpy(sample.copy()),
                             range(num_steps), ref.timesteps, step_kwargs)
    x_no_noise, _ = compare_loops(ours, plan, ref, sample.copy(), torch.from_numpy(sample.copy()),
                                  range(num_steps), ref.timesteps)
    assert rel_err(x, x_no_noise) > 1e-3  # eta really added noise


def test_ddim_variance_noise_equals_generator_draws():
    ours = S.make_scheduler(SD_CONFIG, "ddim")
    plan = ours.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    out = fake_network(x, plan.timesteps[3])
    a, _ = ours.step(plan, 3, x, out, eta=1.0, generator=np.random.default_rng(5))
    noise = np.random.default_rng(5).standard_normal(SHAPE, dtype=np.float32)
    b, _ = ours.step(plan, 3, x, out, eta=1.0, variance_noise=noise)
    c, _ = ours.step(plan, 3, x, out, eta=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_training_schedule_is_bit_exact():
    for start, end, steps in [(0.0001, 0.02, 1000), (0.00085**0.5, 0.012**0.5, 1000), (0.1, 0.7, 7),
                              (0.1, 0.7, 50), (-3.0, 5.0, 33), (1.0, 1.0, 1)]:
        ref = torch.linspace(start, end, steps, dtype=torch.float32).numpy()
        np.testing.assert_array_equal(S.torch_linspace_f32(start, end, steps), ref)
    for config, name, overrides in [(SD_CONFIG, "ddim", {}), ({}, "euler", {}),
                                    ({}, "dpm++", {"beta_schedule": "squaredcos_cap_v2"})]:
        ours, ref = build(config, name, overrides)
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    # Zero-SNR rescaling goes through torch's (not correctly rounded) sqrt, and the end of the
    # schedule amplifies its one-ulp differences (see CASES).
    for name in ("ddim", "euler", "dpm++"):
        ours, ref = build(SD_CONFIG, name, {"rescale_betas_zero_snr": True})
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(ours.alphas_cumprod[:900], ref.alphas_cumprod.numpy()[:900], rtol=RTOL)
        np.testing.assert_allclose(1 - ours.betas, 1 - ref.betas.numpy(), rtol=1e-5)


def test_hidden_sigma_bounds_reach_dpm_karras():
    # diffusers keeps sigma_min/sigma_max from a foreign config and DPM++ Karras uses them.
    ours, ref = build(SVD_CONFIG, "dpm++", {})
    assert ours.config.sigma_max == 700.0 and ours.config.use_karras_sigmas
    plan = ours.set_timesteps(5)
    ref.set_timesteps(5)
    np.testing.assert_allclose(plan.sigmas, ref.sigmas.numpy(), rtol=RTOL)
    assert plan.sigmas[0] == np.float32(700.0)


@pytest.mark.parametrize(
    "config,name,overrides",
    [(SVD_CONFIG, None, {}), (SD_CONFIG, "ddim", {}), (SD_CONFIG, "dpm++", {}),
     (SD_CONFIG, "dpm++", {"use_karras_sigmas": True}), (SD_CONFIG, "euler", {"timestep_spacing": "trailing"})],
    ids=["svd-euler", "ddim", "dpm", "dpm-karras", "euler-trailing"],
)
def test_strength_and_add_noise_match_img2img_flow(config, name, overrides):
    num_steps, strength = 25, 0.6
    ours, ref = build(config, name, overrides)
    plan = ours.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)

    # The real pipeline helper (it also calls ref.set_begin_index(t_start) where supported).
    ref_timesteps, ref_remaining = StableDiffusionImg2ImgPipeline.get_timesteps(
        SimpleNamespace(scheduler=ref), num_steps, strength, "cpu")
    t_start, timesteps = S.get_timesteps_for_strength(plan, strength)
    np.testing.assert_allclose(timesteps, ref_timesteps.numpy(), rtol=RTOL)
    assert len(plan.timesteps) - t_start == ref_remaining

    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, *SHAPE[1:])).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    x = S.add_noise(plan, latents, noise, step_index=t_start)
    x_ref = ref.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), ref_timesteps[:1].repeat(2))
    assert rel_err(x, x_ref.numpy()) <= RTOL

    # Denoise the rest of the schedule the way the pipeline does.
    compare_loops(ours, plan, ref, x, x_ref, range(t_start, len(plan.timesteps)), ref_timesteps)


@pytest.mark.parametrize("config,name", [(SVD_CONFIG, None), (SD_CONFIG, "ddim"), (SD_CONFIG, "dpm++")])
def test_add_noise_by_timestep_matches_diffusers_lookup(config, name):
    ours, ref = build(config, name, {})
    plan = ours.set_timesteps(20)
    ref.set_timesteps(20)  # no begin index: diffusers looks the timestep up
    rng = np.random.default_rng(11)
    latents = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    picks = [0, 5, 19]
    ts_ref = ref.timesteps[picks]
    x = S.add_noise(plan, latents, noise, plan.timesteps[picks])
    x_ref = ref.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), ts_ref)
    assert rel_err(x, x_ref.numpy()) <= RTOL
    if ours.name == "ddim":  # DDIM also works from the scheduler with any training timestep
        t = torch.tensor([999, 500, 0])
        x = S.add_noise(ours, latents, noise, t.numpy())
        assert rel_err(x, ref.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), t).numpy()) <= RTOL


def test_dpm_add_noise_at_a_timestep_off_the_schedule_takes_the_last_step():
    """diffusers' DPMSolverMultistepScheduler.index_for_timestep falls back to the last step for a timestep
    its schedule does not hold (AnimateDiff's FreeInit noises to 999 on a "leading" schedule)."""
    ours, ref = build(SD_CONFIG, "dpm++", {"timestep_spacing": "leading", "steps_offset": 1})
    plan = ours.set_timesteps(4)
    ref.set_timesteps(4)
    assert 999 not in plan.timesteps.tolist()
    rng = np.random.default_rng(12)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    t = np.array([999, 999])
    x = S.add_noise(plan, latents, noise, t)
    x_ref = ref.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), torch.from_numpy(t))
    assert rel_err(x, x_ref.numpy()) <= RTOL
    np.testing.assert_allclose(x, S.add_noise(plan, latents, noise, step_index=len(plan.timesteps) - 1))


def test_names_and_config_errors_teach():
    assert isinstance(S.make_scheduler(SVD_CONFIG), S.EulerDiscrete)
    assert isinstance(S.make_scheduler(SVD_CONFIG, "DDIM"), S.DDIM)
    assert isinstance(S.make_scheduler(SVD_CONFIG, "dpmsolver++"), S.DPMSolverMultistep)
    with pytest.raises(ValueError, match="euler.*ddim|ddim.*euler"):
        S.make_scheduler(SD_CONFIG)  # PNDMScheduler is not supported
    with pytest.raises(ValueError, match="dpm\\+\\+"):
        S.make_scheduler({}, "lms")
    with pytest.raises(ValueError, match="no '_class_name'"):
        S.make_scheduler({"beta_schedule": "linear"})
    with pytest.raises(ValueError, match="scaled_linear"):
        S.make_scheduler({}, "euler", beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="v_prediction"):
        S.make_scheduler({}, "ddim", prediction_type="flow")
    with pytest.raises(ValueError, match="'linear'"):
        S.make_scheduler({}, "euler", interpolation_type="log_linear")
    with pytest.raises(ValueError, match="trailing"):
        S.make_scheduler({}, "dpm++", timestep_spacing="uniform")
    with pytest.raises(ValueError, match="dpmsolver\\+\\+"):
        S.make_scheduler({}, "dpm++", algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="use_exponential_sigmas"):
        S.make_scheduler({}, "euler", use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="no config field"):
        S.make_scheduler({}, "euler", use_karas_sigmas=True)
    with pytest.raises(NotImplementedError, match="thresholding"):
        S.make_scheduler({}, "ddim", thresholding=True)


def test_step_errors_teach():
    ddim = S.make_scheduler(SD_CONFIG, "ddim")
    plan = ddim.set_timesteps(10)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="generator"):
        ddim.step(plan, 0, x, x, eta=0.3)
    with pytest.raises(ValueError, match="loop index"):
        ddim.step(plan, int(plan.timesteps[0]), x, x)  # timestep passed where the index belongs
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddim.set_timesteps(0)
    with pytest.raises(ValueError, match="strength"):
        S.get_timesteps_for_strength(plan, 1.5)
    with pytest.raises(ValueError, match="no denoising step"):
        S.get_timesteps_for_strength(plan, 0.05)

    dpm = S.make_scheduler(SD_CONFIG, "dpm++")
    plan = dpm.set_timesteps(10)
    _, state = dpm.step(plan, 0, x, x)
    _, state = dpm.step(plan, 1, x, x, state)
    with pytest.raises(ValueError, match="state comes from step 1"):
        dpm.step(plan, 3, x, x, state)
    with pytest.raises(ValueError, match="different scheduler"):
        dpm.step(S.make_scheduler({}, "dpm++").set_timesteps(10), 0, x, x)
    euler = S.make_scheduler(SVD_CONFIG)
    with pytest.raises(ValueError, match="needs a Plan"):
        S.add_noise(euler, x, x, timestep=1.0)
    with pytest.raises(ValueError, match="not in plan.timesteps"):
        S.add_noise(euler.set_timesteps(5), x, x, timestep=123.0)
