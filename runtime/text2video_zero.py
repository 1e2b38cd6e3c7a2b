"""TextToVideoZeroPipeline (Text2Video-Zero over a Stable Diffusion 1.x UNet) on exported graphs.
``__call__`` mirrors diffusers' argument for argument and is written flat with its phases:

1. backward (DDIM) from T to T_1 on the first frame alone (frame 0 of graph ``unet_video``, given the
   first frame repeated: export/text2video_zero.py says why that is diffusers' plain UNet; exports made
   before that change, with a separate one-frame graph ``unet_frame``, are refused at load: re-export),
2. on to T_0,
3. the first frame at T_0 copied to the other frames and warped by a translation motion field
   (``create_motion_field_and_warp_latents``: numpy, matching torch's bilinear ``F.interpolate`` and
   nearest ``grid_sample`` with reflection padding),
4. those frames re-noised from T_0 back to T_1 with the product of the scheduler's alphas (diffusers'
   ``forward_loop``, a DDPM forward jump),
5. every frame denoised from T_1 to 0 together, with cross-frame attention (graph ``unet_video``),
6. the VAE decodes the frames.

Randomness comes from one numpy generator in diffusers' order: the initial latents (unless given),
DDIM's eta noise of phases 1-2, the forward_loop noise, then DDIM's eta noise of phase 5.

Differences from diffusers, each refused with a message rather than silently changed: one prompt per
call (the export's batch is 1, as num_videos_per_prompt == 1 in diffusers), guidance_scale > 1 (diffusers
fails without guidance: it concatenates negative embeddings that are None), 0 <= t0 < t1 <
num_inference_steps (diffusers' documented ranges), and DDIM only (diffusers slices the scheduler's
alphas with timestep values, which needs integer timesteps, and hands the last phase a copy of the
scheduler state after phase 1, which a multistep solver would mix across phases). ``video_length``,
``height`` and ``width`` default to the exported shapes. The output's ``images`` is diffusers' layout
([F, H, W, 3] in [0, 1] for "tensor"/"np"); ``frames`` adds the batch axis ([1, F, H, W, 3]) for the
CLI and the server, which also ask for "uint8" and "pil".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import ExportedPipeline
from .families import FamilySpec
from .manifest import ExportInvalid, ShapeMismatch
from .schedulers import make_betas
from .t2v import _UNet3DPipeline

F32 = np.float32
OUTPUT_TYPES = ("tensor", "np", "uint8", "pil", "latent")
FIELD_SIZE = 512  # diffusers' create_motion_field builds a 512x512 flow whatever the latent size


# ----------------------------------------------------------------------------- motion field (numpy)
def create_motion_field(motion_field_strength_x, motion_field_strength_y, frame_ids) -> np.ndarray:
    """Translation flow [len(frame_ids), 2, 512, 512] float32: channel 0 = strength_x * frame id,
    channel 1 = strength_y * frame id (diffusers' create_motion_field)."""
    flow = np.zeros((len(frame_ids), 2, FIELD_SIZE, FIELD_SIZE), F32)
    for k, fid in enumerate(frame_ids):
        flow[k, 0] = F32(motion_field_strength_x * fid)
        flow[k, 1] = F32(motion_field_strength_y * fid)
    return flow


def _linear_taps(in_size: int, out_size: int):
    """torch's upsample_bilinear2d taps along one axis (align_corners=False, no scale given), in float32:
    src = max(scale * (dst + 0.5) - 0.5, 0), scale = in / out."""
    scale = F32(F32(in_size) / F32(out_size))
    src = scale * (np.arange(out_size, dtype=F32) + F32(0.5)) - F32(0.5)
    src = np.maximum(src, F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(F32), F32(0), F32(1)).astype(F32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (F32(1) - lam).astype(F32), lam


def resize_bilinear(x: np.ndarray, size) -> np.ndarray:
    """F.interpolate(x, size, mode="bilinear") for x [N, C, H, W] float32, with torch's CPU arithmetic:
    (x00 * w0 + x01 * w1) * h0 + (x10 * w0 + x11 * w1) * h1."""
    _, _, hin, win = x.shape
    y0, y1, hy0, hy1 = _linear_taps(hin, size[0])
    x0, x1, wx0, wx1 = _linear_taps(win, size[1])
    rows0, rows1 = x[:, :, y0], x[:, :, y1]  # [N, C, h, W]
    top = rows0[..., x0] * wx0 + rows0[..., x1] * wx1
    bottom = rows1[..., x0] * wx0 + rows1[..., x1] * wx1
    return (top * hy0[:, None] + bottom * hy1[:, None]).astype(F32)


def _reflect_clip(coord: np.ndarray, size: int) -> np.ndarray:
    """grid_sample's unnormalize + reflection padding + clip (align_corners=False), float32."""
    x = (coord + F32(1)) * F32(size / 2) - F32(0.5)
    low, twice_span = F32(-0.5), F32(2 * size)
    dist = np.abs(x - low)
    flips = np.trunc(dist / twice_span)
    extra = dist - flips * twice_span
    x = np.minimum(extra, twice_span - extra) + low
    return np.clip(x, F32(0), F32(size - 1))


def grid_sample_nearest_reflection(latent: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """torch grid_sample(latent, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    for latent [N, C, H, W] and grid [N, h, w, 2] (x, y in [-1, 1]) -> [N, C, h, w]."""
    n, _, hgt, wid = latent.shape
    ix = np.rint(_reflect_clip(grid[..., 0].astype(F32), wid)).astype(np.int64)  # round half to even
    iy = np.rint(_reflect_clip(grid[..., 1].astype(F32), hgt)).astype(np.int64)
    batch = np.arange(n)[:, None, None]
    return latent[batch, :, iy, ix].transpose(0, 3, 1, 2)  # [N, h, w, C] -> [N, C, h, w]


def warp_single_latent(latent: np.ndarray, reference_flow: np.ndarray) -> np.ndarray:
    """latent [1, C, h, w] warped by reference_flow [1, 2, H, W] (diffusers' warp_single_latent)."""
    _, _, big_h, big_w = reference_flow.shape
    _, _, h, w = latent.shape
    rows, cols = np.meshgrid(np.arange(big_h, dtype=F32), np.arange(big_w, dtype=F32), indexing="ij")
    coords = np.stack([cols, rows])[None] + reference_flow  # [1, 2, H, W]: x then y
    coords = np.concatenate([coords[:, :1] / F32(big_w), coords[:, 1:] / F32(big_h)], 1)
    coords = coords * F32(2) - F32(1)
    coords = resize_bilinear(coords.astype(F32), (h, w)).transpose(0, 2, 3, 1)  # [1, h, w, 2]
    return grid_sample_nearest_reflection(latent, coords)


def create_motion_field_and_warp_latents(motion_field_strength_x, motion_field_strength_y, frame_ids, latents):
    """latents [K, C, h, w] -> each frame warped by its translation (diffusers' function of that name)."""
    field = create_motion_field(motion_field_strength_x, motion_field_strength_y, frame_ids)
    warped = np.array(latents, F32, copy=True)
    for i in range(len(warped)):
        warped[i] = warp_single_latent(latents[i][None], field[i][None])[0]
    return warped


# ----------------------------------------------------------------------------- output
@dataclass
class TextToVideoPipelineOutput:
    """diffusers' TextToVideoPipelineOutput: ``images`` [F, H, W, 3] (output "tensor"/"np"/"uint8"),
    a list of F PIL images ("pil") or the latents [F, C, h, w] ("latent"). ``frames`` is the same video
    with a batch axis of 1, the layout the CLI and the server read from every family."""

    images: Any
    nsfw_content_detected: Any = None

    @property
    def frames(self):
        if isinstance(self.images, np.ndarray):
            return self.images[None]
        return [self.images]


def _plan_until(plan, stop: int):
    """The plan's first ``stop`` steps (a backward phase that ends early); indices are unchanged."""
    def cut(a, n):
        return None if a is None else a[:n]

    return dataclasses.replace(plan, timesteps=plan.timesteps[:stop], alphas_cumprod=cut(plan.alphas_cumprod, stop),
                               alphas_cumprod_prev=cut(plan.alphas_cumprod_prev, stop),
                               sigmas=cut(plan.sigmas, stop + 1))


# ----------------------------------------------------------------------------- pipeline
class TextToVideoZeroPipeline(_UNet3DPipeline):
    """diffusers' TextToVideoZeroPipeline. Prompt encoding (tokenizer, text_encoder graph, negative
    prompts) is runtime/t2v.py's ``encode_prompt``."""

    family = "text2video_zero"
    graph_names = ("text_encoder", "unet_video", "vae_decoder", "vae_decoder_tail")
    image_inputs = ()
    request_limits = {"guidance_scale": (0.0, 50.0), "t0": (0, 999), "t1": (1, 999)}
    SCHEDULERS = ("ddim",)

    def __init__(self, export, backend):
        if "unet_frame" in export.manifest["graphs"]:
            raise ExportInvalid(f"{export.root}: this export has the separate first-frame graph 'unet_frame' that "
                                "export-model wrote before the first frame ran through 'unet_video'; this runtime "
                                "no longer reads it: export the model again")
        super().__init__(export, backend)

    def __call__(
        self,
        prompt: str | list,
        video_length: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list | None = None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents: np.ndarray | None = None,
        motion_field_strength_x: float = 12,
        motion_field_strength_y: float = 12,
        output_type: str | None = "tensor",
        return_dict: bool = True,
        callback=None,
        callback_steps: int | None = 1,
        t0: int = 44,
        t1: int = 47,
        frame_ids: list | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
    ):
        # 0. defaults come from the export (diffusers: video_length 8, height/width from the unet config)
        video_length, height, width = self.exported_defaults(video_length=video_length, height=height, width=width)

        # 1. check inputs
        self.check_number("video_length", video_length, minimum=1, integer=True)
        frame_ids = self._frame_ids(frame_ids, video_length)
        if num_videos_per_prompt != 1:
            raise ValueError(f"num_videos_per_prompt must be 1 (diffusers asserts it), got {num_videos_per_prompt}")
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt]
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        self.check_prompt_inputs(prompt, negative_prompt, None, None)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {list(OUTPUT_TYPES)}")
        self.check_common("np", callback_steps, None, eta)
        self.check_number("num_inference_steps", num_inference_steps, minimum=1, integer=True)
        self.check_number("guidance_scale", guidance_scale)
        if guidance_scale <= 1.0:
            raise ValueError(f"guidance_scale must be > 1 for TextToVideoZeroPipeline, got {guidance_scale}: "
                             "diffusers' __call__ concatenates the negative prompt embeddings, which encode_prompt "
                             "returns as None without classifier-free guidance")
        self.check_timesteps(num_inference_steps, t0, t1)
        for name, value in (("motion_field_strength_x", motion_field_strength_x),
                            ("motion_field_strength_y", motion_field_strength_y)):
            self.check_number(name, value)
        self.check_shapes(video_length=video_length, height=height, width=width)
        rng = self.make_generator(generator, seed)

        # 2. encode input prompt: [uncond, cond] as the pair the step graphs take
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompt, True, negative_prompt)
        context = np.concatenate([negative_prompt_embeds, prompt_embeds]).astype(F32)  # [2, N, D]
        guidance = np.array([guidance_scale], F32)

        # 3. prepare timesteps
        sched = self._scheduler(scheduler)
        if sched.name not in self.SCHEDULERS:
            raise ValueError(f"scheduler {sched.name!r} is not supported by TextToVideoZeroPipeline; choose one of "
                             f"{list(self.SCHEDULERS)} (diffusers slices the scheduler's alphas by timestep value and "
                             "restarts the last phase from a copy of the scheduler state after phase 1)")
        plan = sched.set_timesteps(num_inference_steps)
        timesteps = plan.timesteps
        n = len(timesteps)

        # 4. prepare latent variables: the first frame, [1, C, h, w]
        axes = self.manifest.latent_axes()
        shape = (1, axes["C"], axes["H"], axes["W"])
        latents = self.initial_latents(shape, latents, rng)
        latents = latents * plan.init_noise_sigma

        def video_step(model_in, t, i):
            return self.graphs["unet_video"](sample=model_in, timestep=np.array([t], F32),
                                             encoder_hidden_states=context, guidance_scale=guidance)[0]

        def frame_step(model_in, t, i):  # model_in: [1, C, h, w]; frame 0 of the cross-frame graph
            return video_step(np.repeat(model_in, video_length, axis=0), t, i)[:1]

        def phase_callback(start):  # diffusers' backward_loop counts i from 0 in every phase
            return self.legacy_step_hook(callback, callback_steps, offset=start)

        # 5. first backward process, T -> T_1 (first frame alone)
        stop1, stop0 = n - t1 - 1, n - t0 - 1
        x_1_t1 = self.denoise(sched, _plan_until(plan, stop1), latents, frame_step, generator=rng, eta=eta,
                              on_step=phase_callback(0))
        # 6. second backward process, T_1 -> T_0
        x_1_t0 = self.denoise(sched, _plan_until(plan, stop0), x_1_t1, frame_step, start=stop1, generator=rng,
                              eta=eta, on_step=phase_callback(stop1))

        # 7. propagate the first frame to the others, add motion, re-noise T_0 -> T_1 (forward_loop)
        x_2k_t0 = np.repeat(x_1_t0, video_length - 1, axis=0)
        with self.timed("motion_field"):
            x_2k_t0 = create_motion_field_and_warp_latents(motion_field_strength_x, motion_field_strength_y,
                                                           frame_ids[1:], x_2k_t0)
        x_2k_t1 = self.forward_loop(sched, x_2k_t0, int(timesteps[stop0]), int(timesteps[stop1]), rng)

        # 8. last backward process, T_1 -> 0, every frame with cross-frame attention
        x_1k_t1 = np.concatenate([x_1_t1, x_2k_t1]).astype(F32)  # [F, C, h, w]
        latents = self.denoise(sched, plan, x_1k_t1, video_step, start=stop1, generator=rng, eta=eta,
                               on_step=phase_callback(stop1))

        # 9. decode
        if output_type == "latent":
            image = latents
        else:
            frames = self.decode_chunks(np.ascontiguousarray(latents), self.shapes["decode_chunk_size"])  # [F,3,H,W]
            image = np.clip(frames / F32(2) + F32(0.5), F32(0), F32(1)).transpose(0, 2, 3, 1)  # [F, H, W, 3]
            image = np.ascontiguousarray(image.astype(F32))
            if output_type in ("uint8", "pil"):
                image = (image * F32(255)).round().astype(np.uint8)
                if output_type == "pil":
                    import PIL.Image

                    image = [PIL.Image.fromarray(frame) for frame in image]
        if not return_dict:
            return (image, None)
        return TextToVideoPipelineOutput(images=image, nsfw_content_detected=None)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def forward_loop(sched, x_t0: np.ndarray, t0: int, t1: int, rng: np.random.Generator) -> np.ndarray:
        """diffusers' forward_loop: the DDPM forward jump from timestep value t0 to t1,
        x_t1 = sqrt(prod alphas[t0:t1]) x_t0 + sqrt(1 - prod) eps, eps from the generator."""
        eps = rng.standard_normal(x_t0.shape, dtype=F32)
        alphas = F32(1) - make_betas(sched.config)
        alpha_vec = F32(np.prod(alphas[t0:t1].astype(np.float64)))
        return (np.sqrt(alpha_vec) * x_t0 + np.sqrt(F32(1) - alpha_vec) * eps).astype(F32)

    @staticmethod
    def check_timesteps(num_inference_steps, t0, t1):
        ExportedPipeline.check_number("t0", t0, minimum=0, integer=True)
        ExportedPipeline.check_number("t1", t1, minimum=0, integer=True)
        if not t0 < t1:
            raise ValueError(f"t0 ({t0}) must be smaller than t1 ({t1}): the frames are warped at step t0 and "
                             "re-noised back to step t1 (diffusers documents t1 in [t0 + 1, num_inference_steps - 1])")
        if not num_inference_steps > t1:
            raise ValueError(f"num_inference_steps ({num_inference_steps}) must exceed t1 ({t1}): Text2Video-Zero "
                             f"counts t0 and t1 in inference steps from the end of the schedule; use at least "
                             f"{t1 + 1} steps or a smaller t1 (t0 < t1 < num_inference_steps)")

    @staticmethod
    def _frame_ids(frame_ids, video_length):
        if frame_ids is None:
            return list(range(video_length))
        if isinstance(frame_ids, str):  # the command line: "0,2,4"
            try:
                frame_ids = [int(v) for v in frame_ids.replace(" ", "").split(",") if v]
            except ValueError:
                raise ValueError(f"frame_ids {frame_ids!r}: expected comma-separated integers such as 0,1,2") from None
        frame_ids = list(frame_ids)
        if len(frame_ids) != video_length:
            raise ShapeMismatch(f"frame_ids has {len(frame_ids)} entries but video_length is {video_length} "
                                "(diffusers asserts len(frame_ids) == video_length)")
        return frame_ids

    def check_request(self, kwargs: dict):
        defaults = {"num_inference_steps": 50, "t0": 44, "t1": 47, "guidance_scale": 7.5}
        value = {k: kwargs.get(k, v) for k, v in defaults.items()}
        self.check_timesteps(value["num_inference_steps"], value["t0"], value["t1"])
        if value["guidance_scale"] <= 1.0:
            raise ValueError(f"guidance_scale must be > 1 for TextToVideoZeroPipeline, got {value['guidance_scale']}")

    def example_request(self) -> dict:
        """The smallest valid request: two steps with t0=0, t1=1 (num_inference_steps must exceed t1)."""
        request = super().example_request()
        request.update({"num_inference_steps": 2, "t0": 0, "t1": 1})
        return request


FAMILY = FamilySpec(
    name="text2video_zero",
    pipelines={"TextToVideoZeroPipeline": TextToVideoZeroPipeline},
    aliases={"text2video-zero": "TextToVideoZeroPipeline", "t2v-zero": "TextToVideoZeroPipeline"},
    export="text2video_zero",
    components=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
)
