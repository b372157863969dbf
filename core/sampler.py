"""THE sampling loop: every experiment in the app runs through `sample`.

Experiments differ only in what they feed it: the conditioning (a prompt's encoding, edited token
embeddings, a mix of prompts), the start (pure noise at step 0, or an image's latents noised to step k),
per-step hooks (loss guidance), and how often to decode a preview. The loop yields one `Frame` per step.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol, TYPE_CHECKING

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from core import schedule
from core.vae import decode, fast_decode, to_pil

if TYPE_CHECKING:  # annotations only: core.models imports core.defaults, which imports the sampler
    from core.models import ModelBundle

MAX_STEPS = 200
MAX_GUIDANCE = 50.0
MAX_SEED = 2**53 - 1  # the largest whole number a browser keeps exact, so that a page or a link never rounds a seed
RANDOM_SEED = -1  # asks for a seed to be picked (`drawn`); the run reports the one it used
RANDOM_SEEDS = 2**32  # a picked seed is below it: short enough to read and type again
MIN_SIDE = 64
PREVIEWS = {  # how previews are decoded; the final image always goes through the VAE
    "auto": "fast when previewing every step, else the full VAE",
    "fast": "a linear map of the latents fitted to the VAE: one pixel per latent cell, almost free "
            "(the VAE itself on models where no such map fits)",
    "full": "the VAE decoder: every pixel, at the cost of a decode per preview",
}
TORCH_THREADS = torch.get_num_threads()  # torch's own choice, read before anything changes it
# The thread that decodes previews beside the next step (see `_overlapped`): one, shared by every run, so that it
# adds one team of torch's threads however many runs go at once (a comparison, several users).
_DECODING = ThreadPoolExecutor(1, thread_name_prefix="sdlens-decode")


class RunFailed(RuntimeError):
    """A run broke off mid-way; the message says why and what to try."""


@dataclass(frozen=True)
class Settings:
    """Plain values for one run; `check_settings` validates them against a model."""

    steps: int = 30                # denoising steps
    guidance_scale: float = 7.5    # classifier-free guidance; 1.0 turns it off
    seed: int = 32                 # seeds the run's own generator (CPU, so a seed means the same noise everywhere)
    height: int = 512              # pixels, a multiple of the VAE's downsampling factor
    width: int = 512
    preview_every: int = 1         # decode x_t and x0 every N steps (0: only at the end)
    scheduler: str = "lms"         # a key of core.schedule.SCHEDULERS
    previews: str = "auto"         # a key of PREVIEWS: how x_t and x0 are decoded for the page


@dataclass(frozen=True)
class Conditioning:
    """What the UNet's cross-attention reads: the prompt's encoding and the negative/empty one."""

    cond: torch.Tensor             # (1, 77, hidden)
    uncond: torch.Tensor           # (1, 77, hidden)


@dataclass(frozen=True)
class Start:
    """Begin from an image instead of pure noise: its latents are noised to step `step`."""

    latents: torch.Tensor          # (1, 4, h, w), clean latents scaled by the VAE's scaling factor
    step: int                      # 0-based index of the first step to run
    lms_order: str = "run"         # a key of schedule.LMS_ORDERS: where LMS starts counting its order


@dataclass(frozen=True)
class StepState:
    """What a hook sees in the middle of a step, after the noise prediction, before the scheduler."""

    index: int                     # 0-based index into the schedule
    timestep: torch.Tensor
    sigma: float
    latents: torch.Tensor          # x_t, (1, 4, h, w), in the scheduler's scale
    noise_pred: torch.Tensor       # the guided noise prediction for x_t
    predict_noise: Callable[[torch.Tensor], torch.Tensor]  # x_t -> guided noise prediction (differentiable)


@dataclass(frozen=True)
class HookResult:
    latents: torch.Tensor          # replaces x_t before the scheduler step
    loss: float | None = None      # shown with the frame
    note: str | None = None        # something the user should know (e.g. the hook gave up)


Hook = Callable[[StepState], HookResult | None]


class Prediction(NamedTuple):
    """A step's noise prediction: the guided one, and under classifier-free guidance the two it mixes."""

    guided: torch.Tensor                                      # (1, 4, h, w)
    branches: tuple[torch.Tensor, torch.Tensor] | None        # (uncond, text), each (1, 4, h, w); None without CFG


class Observer(Protocol):
    """Reads a run's internals and changes nothing (attention maps): the loop enters `attached` for the whole
    run and leaves it however the run ends, enters `watching` around its UNet call on each step's x_t, and puts
    `summary()` on that step's Frame as `observed[name]`."""

    name: str

    def attached(self, bundle: ModelBundle, settings: Settings) -> AbstractContextManager: ...

    def watching(self, cond_index: int) -> AbstractContextManager:
        """`cond_index`: the text-conditioned sample's place in the UNet batch ([uncond, cond] under CFG)."""

    def summary(self) -> object: ...


@dataclass(frozen=True)
class Frame:
    """What one step hands to whoever listens."""

    index: int                     # 0-based index into the schedule
    steps: int                     # steps in the whole schedule
    timestep: float
    sigma: float
    x_t: torch.Tensor              # the noisy latents the UNet saw, in its input scale, (1, 4, h, w)
    x0: torch.Tensor               # the scheduler's predicted original sample, (1, 4, h, w)
    latents: torch.Tensor          # latents after this step, (1, 4, h, w)
    x_t_image: Image.Image | None  # decoded x_t on preview steps
    x0_image: Image.Image | None   # decoded x0 on preview steps
    image: Image.Image | None      # the decoded result, on the last step of the schedule
    loss: float | None = None      # a hook's loss, on steps where one ran
    note: str | None = None        # a hook's message on this step
    observed: dict[str, object] = field(default_factory=dict)  # each observer's summary of this step, by name
    noise_pred: torch.Tensor | None = None  # the guided noise prediction the scheduler stepped with
    branches: tuple[torch.Tensor, torch.Tensor] | None = None  # under CFG: the UNet's (uncond, text) predictions


Step = tuple[Frame, Callable[[], tuple]]  # a step's frame, and the call that decodes its images


def drawn(settings: Settings) -> Settings:
    """The settings with a seed picked for RANDOM_SEED; any other as it is."""
    return replace(settings, seed=random.randrange(RANDOM_SEEDS)) if settings.seed == RANDOM_SEED else settings


def check_settings(bundle: ModelBundle, settings: Settings) -> None:
    """Every check of a run's numbers, each message naming the bad value and what is allowed."""
    if not isinstance(settings.steps, int) or not 1 <= settings.steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS}, got {settings.steps!r}")
    if not 0.0 <= settings.guidance_scale <= MAX_GUIDANCE:  # also false for NaN
        raise ValueError(f"guidance_scale must be from 0 to {MAX_GUIDANCE:g}, got {settings.guidance_scale!r}")
    if not isinstance(settings.seed, int) or not 0 <= settings.seed <= MAX_SEED:
        raise ValueError(f"seed must be {RANDOM_SEED} (a random seed) or a whole number from 0 to {MAX_SEED}, "
                         f"got {settings.seed!r}")
    factor, max_side = bundle.vae_scale_factor, bundle.max_side
    for name, side in (("height", settings.height), ("width", settings.width)):
        if not isinstance(side, int) or not MIN_SIDE <= side <= max_side:
            raise ValueError(f"{name} must be from {MIN_SIDE} to {max_side} pixels, got {side!r}")
        if side % factor:
            raise ValueError(f"{name} must be a multiple of {factor} from {MIN_SIDE} to {max_side}, got {side}")
    if not isinstance(settings.preview_every, int) or not 0 <= settings.preview_every <= settings.steps:
        raise ValueError(f"preview_every must be from 0 (only the end) to steps ({settings.steps}), got {settings.preview_every!r}")
    if settings.scheduler not in schedule.SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(schedule.SCHEDULERS)}, got {settings.scheduler!r}")
    if settings.previews not in PREVIEWS:
        raise ValueError(f"previews must be one of {', '.join(PREVIEWS)}, got {settings.previews!r}")


def initial_noise(bundle: ModelBundle, settings: Settings) -> torch.Tensor:
    """The seed's noise, (1, 4, h, w): drawn on the CPU, so a seed gives the same noise on every device."""
    factor = bundle.vae_scale_factor
    shape = (1, bundle.latent_channels, settings.height // factor, settings.width // factor)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    return randn_tensor(shape, generator=generator, device=bundle.device, dtype=bundle.dtype)


def start_latents(bundle: ModelBundle, settings: Settings, scheduler: SchedulerMixin, start: Start | None) -> torch.Tensor:
    """What a run denoises first: the seed's noise scaled to the first sigma, or, starting from an image,
    its latents noised to the start step with the scheduler's add_noise."""
    noise = initial_noise(bundle, settings)
    if start is None:
        return noise * scheduler.init_noise_sigma
    return schedule.add_noise(scheduler, start.latents.to(bundle.device, bundle.dtype), noise, start.step)


@torch.inference_mode()
def _decode_frame(bundle: ModelBundle, x_t: torch.Tensor, x0: torch.Tensor, final: torch.Tensor | None,
                  preview: bool, fast: bool) -> tuple[Image.Image | None, Image.Image | None, Image.Image | None]:
    """x_t and x0 decoded for the page on preview steps (fast or full, in one call), and the finished image on
    the last step: always the full VAE, in a call of its own, so that the previews never change it (batched, the
    VAE's sums round differently, by up to a grey level)."""
    x_t_image = x0_image = None
    if preview:
        x_t_image, x0_image = to_pil((fast_decode if fast else decode)(bundle, torch.cat([x_t, x0])))
    return x_t_image, x0_image, to_pil(decode(bundle, final))[0] if final is not None else None


class Frames(Iterator[Frame]):
    """A run's frames, one per `next()`; `start` holds the latents the run denoises first, known before its
    first step (image to image shows them decoded)."""

    def __init__(self, start: torch.Tensor, frames: Generator[Frame, None, None]):
        self.start, self._frames = start, frames

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        """End the run here: its observers are detached (a page closed mid-run)."""
        self._frames.close()


def sample(bundle: ModelBundle, cond: Conditioning, settings: Settings, *, start: Start | None = None,
           hooks: Sequence[Hook] = (), observers: Sequence[Observer] = (),
           should_stop: Callable[[], bool] = lambda: False) -> Frames:
    """Check the inputs and make the starting latents now, then return the frames, one per step as the reader
    asks for them (on CUDA, and on a CPU with a core to spare, a frame's previews decode while the next step runs).

    `should_stop` is asked before every step; when it says yes the run ends there.
    """
    check_settings(bundle, settings)
    if start is not None and not 0 <= start.step < settings.steps:
        raise ValueError(f"start step must be from 0 to {settings.steps - 1}, got {start.step}")
    if start is not None and start.lms_order not in schedule.LMS_ORDERS:
        raise ValueError(f"lms_order must be one of {', '.join(schedule.LMS_ORDERS)}, got {start.lms_order!r}")
    # 1. this run's own scheduler, and what it denoises first: pure noise, or the image's latents noised to the
    # first timestep
    first = start.step if start else 0
    scheduler = schedule.make_scheduler(bundle.scheduler_config, settings.scheduler, settings.steps, bundle.device, first)
    with torch.no_grad():
        latents = start_latents(bundle, settings, scheduler, start)
    # Without hooks nothing needs autograd at all; a hook (loss guidance) builds its own graph inside its step.
    mode = torch.no_grad() if hooks else torch.inference_mode()
    observers = tuple(observers)
    counted_from = first if start is not None and start.lms_order == "diffusers" else 0  # LMS's order
    denoising = mode(_denoise)(bundle, cond, settings, scheduler, latents, (first, counted_from), tuple(hooks),
                               observers, should_stop)
    frames = _decoded(denoising) if _overlapped(bundle) else (
        _pictured(frame, pictures()) for frame, pictures in denoising)
    return Frames(latents, _attached(bundle, settings, observers, frames))


def _overlapped(bundle: ModelBundle) -> bool:
    """Whether previews decode beside the next step: on CUDA, so that the next step's kernels are queued while
    a preview waits for its copy to the CPU; and on a CPU where a second team of torch's threads fits on the
    cores, as in the app on 2 cores, which gives torch one thread (a toy run with previews every step then
    takes 1.3 s instead of 1.8 s; with the previews on torch's two threads, 1.6 s)."""
    if bundle.device.type == "cuda":
        return True
    return bundle.device.type == "cpu" and 2 * torch.get_num_threads() <= TORCH_THREADS


def _pictured(frame: Frame, images: tuple[Image.Image | None, ...]) -> Frame:
    """The frame with its decoded x_t, x0 and final image (each None where the step has none)."""
    x_t_image, x0_image, image = images
    return replace(frame, x_t_image=x_t_image, x0_image=x0_image, image=image)


def _decoded(steps: Iterator[Step]) -> Iterator[Frame]:
    """Each step's frame with its images, decoded on the decoding thread while the next step runs. The first
    frame comes at once; a later one reaches the reader once the step after it is computed (or has failed: the
    frames before a failure are all shown). A step made while Stop was pressed is dropped, as the run would not
    have made it: a run ends without its final image only when stopped."""
    with closing(steps):
        frame, pictures = next(steps, (None, None))
        if frame is None:
            return
        yield _pictured(frame, pictures())
        waiting = None
        while True:
            try:
                frame, pictures = next(steps)
            except StopIteration:
                break
            except Exception:
                if waiting is not None:
                    yield _pictured(waiting[0], waiting[1].result())
                raise
            made = _DECODING.submit(_with_threads, torch.get_num_threads(), pictures)
            if waiting is not None:
                yield _pictured(waiting[0], waiting[1].result())
            waiting = frame, made
        if waiting is not None and (images := waiting[1].result())[2] is not None:
            yield _pictured(waiting[0], images)


def _with_threads(threads: int, pictures: Callable[[], tuple]) -> tuple:
    """The images, decoded with the run's count of torch threads: a thread keeps the count it first ran with,
    and another count sums in another order (images would differ in their last bit from a run decoded in step)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return pictures()


def _attached(bundle: ModelBundle, settings: Settings, observers: tuple[Observer, ...],
              frames: Iterator[Frame]) -> Iterator[Frame]:
    """The frames with every observer attached from the first step until the run ends, fails or is closed."""
    with ExitStack() as attached:
        for observer in observers:
            attached.enter_context(observer.attached(bundle, settings))
        yield from frames


def _watching(observers: tuple[Observer, ...], cond_index: int) -> ExitStack:
    stack = ExitStack()
    for observer in observers:
        stack.enter_context(observer.watching(cond_index))
    return stack


def _denoise(bundle: ModelBundle, cond: Conditioning, settings: Settings, scheduler: SchedulerMixin,
             latents: torch.Tensor, begin: tuple[int, int], hooks: tuple[Hook, ...], observers: tuple[Observer, ...],
             should_stop: Callable[[], bool]) -> Iterator[Step]:
    """Each step as its frame, and the call that decodes the frame's images."""
    # 2. the steps left from `first` on; LMS counts its order from `counted_from`
    first, counted_from = begin
    timesteps = scheduler.timesteps[first:]
    sigmas = schedule.sigmas(scheduler)

    # 3. classifier-free guidance runs the UNet on [uncond, cond] as one batch
    guided = settings.guidance_scale != 1.0
    context = torch.cat([cond.uncond, cond.cond]) if guided else cond.cond  # (2, 77, hidden) or (1, 77, hidden)

    def noise_of_input(x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        """The noise prediction for an input already in the UNet's scale: guided, and its two branches."""
        noise_pred = bundle.unet(torch.cat([x_t, x_t]) if guided else x_t, t, encoder_hidden_states=context).sample
        if not guided:
            return Prediction(noise_pred, None)
        uncond, text = noise_pred.chunk(2)
        return Prediction(uncond + settings.guidance_scale * (text - uncond), (uncond, text))

    def predict_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise_of_input(scheduler.scale_model_input(x, t), t).guided

    # 4. denoise, one frame per step
    fast = settings.previews == "fast" or (settings.previews == "auto" and settings.preview_every == 1)
    for taken, t in enumerate(timesteps):
        if should_stop():
            return
        index = first + taken
        x_t = scheduler.scale_model_input(latents, t)  # what the UNet sees
        with _watching(observers, 1 if guided else 0):
            prediction = noise_of_input(x_t, t)
        noise_pred = prediction.guided
        loss = note = None
        for hook in hooks:
            state = StepState(index, t, sigmas[index], latents, noise_pred, lambda x, t=t: predict_noise(x, t))
            result = hook(state)
            if result is not None:
                latents, loss, note = result.latents, result.loss, result.note
        next_latents, x0 = schedule.step(scheduler, noise_pred, t, latents, counted_from + taken)
        _check_finite(next_latents, index, settings)
        early = schedule.stopped_early(scheduler)
        note, last = early or note, early is not None or index == settings.steps - 1
        preview = bool(settings.preview_every) and (last or (taken + 1) % settings.preview_every == 0)
        frame = Frame(index, settings.steps, float(t), sigmas[index], x_t, x0, next_latents, None, None, None,
                      loss, note, {o.name: o.summary() for o in observers}, noise_pred, prediction.branches)
        yield frame, functools.partial(_decode_frame, bundle, x_t, x0, next_latents if last else None, preview, fast)
        if last:
            return
        latents = next_latents


def _check_finite(latents: torch.Tensor, index: int, settings: Settings) -> None:
    if not torch.isfinite(latents).all():
        raise RunFailed(
            f"The latents became NaN or infinite at step {index + 1}: lower the guidance scale "
            f"(now {settings.guidance_scale:g}), try another sampler, or use float32 (--dtype float32)")
