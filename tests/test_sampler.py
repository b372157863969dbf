"""The one sampling loop against diffusers' StableDiffusionPipeline, and its contract."""
import math
import re
import threading
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LMSDiscreteScheduler
from PIL import Image

from core import optim_sampler, sampler, schedule, text, vae
from core.engine import Engine
from core.models import torch_threads
from core.vae import decode, to_pil
from core.sampler import RANDOM_SEED, Conditioning, HookResult, RunFailed, Settings, Start, initial_noise, sample

SMALL = Settings(steps=8, guidance_scale=7.5, seed=3, height=64, width=64)


def conditioning(bundle, prompt="a red circle", negative=""):
    return Conditioning(text.encode(bundle, text.tokenize(bundle, prompt)),
                        text.encode(bundle, text.tokenize(bundle, negative)))


def pipeline_latents(pipe, prompt, settings, negative_prompt=None):
    return pipe(prompt, negative_prompt=negative_prompt, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale, height=settings.height, width=settings.width,
                generator=torch.Generator("cpu").manual_seed(settings.seed), output_type="latent").images


@pytest.mark.parametrize("name", list(schedule.SCHEDULERS))
def test_loop_equals_pipeline(tiny_bundle, tiny_pipeline, name, monkeypatch):
    monkeypatch.setattr(optim_sampler.OptimScheduler, "tolerance", 0.0)  # the pipeline runs every step: no early end
    settings = Settings(**{**SMALL.__dict__, "scheduler": name})
    tiny_pipeline.scheduler = schedule.make_scheduler(tiny_bundle.scheduler_config, name, 1, tiny_bundle.device)
    ref = pipeline_latents(tiny_pipeline, "a red circle", settings)
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
    assert (frames[-1].latents - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_loop_equals_pipeline_with_negative_prompt(tiny_bundle, tiny_pipeline, guidance_scale):
    tiny_pipeline.scheduler = LMSDiscreteScheduler.from_config(tiny_bundle.scheduler_config)
    settings = Settings(**{**SMALL.__dict__, "guidance_scale": guidance_scale})
    ref = pipeline_latents(tiny_pipeline, "a red circle", settings, negative_prompt="blue")
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle, negative="blue"), settings))
    assert (frames[-1].latents - ref).abs().max().item() <= 1e-6


def test_ddim_does_not_clip_latents(tiny_bundle):
    scheduler = schedule.make_scheduler(tiny_bundle.scheduler_config, "ddim", 10, tiny_bundle.device)
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.clip_sample is False


def test_one_frame_per_step_with_the_schedules_numbers(tiny_bundle, overlap):
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), SMALL))
    scheduler = schedule.make_scheduler(tiny_bundle.scheduler_config, "lms", SMALL.steps, tiny_bundle.device)
    assert [f.index for f in frames] == list(range(SMALL.steps))
    assert [f.timestep for f in frames] == pytest.approx(scheduler.timesteps.tolist())
    assert [f.sigma for f in frames] == pytest.approx(scheduler.sigmas[:-1].tolist())
    assert all(f.steps == SMALL.steps for f in frames)
    assert frames[0].timestep == 999.0 and frames[0].sigma == pytest.approx(14.6146, abs=1e-4)


def test_previews_and_final_image(tiny_bundle):
    settings = Settings(**{**SMALL.__dict__, "preview_every": 3})
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
    assert [f.index for f in frames if f.x0_image is not None] == [2, 5, 7]  # every 3rd, and the last
    assert [f.image is not None for f in frames] == [False] * 7 + [True]
    last = frames[-1]
    assert last.x0_image.size == (64, 64)
    expected = to_pil(decode(tiny_bundle, last.latents))[0]
    assert list(last.image.getdata()) == list(expected.getdata())
    only_end = list(sample(tiny_bundle, conditioning(tiny_bundle), Settings(**{**SMALL.__dict__, "preview_every": 0})))
    assert [f.index for f in only_end if f.x0_image is not None] == []  # no previews: only the result
    assert list(only_end[-1].image.getdata()) == list(expected.getdata())


@pytest.mark.parametrize("previews, preview_every, side", [("auto", 1, 8), ("fast", 2, 8), ("auto", 2, 64),
                                                           ("full", 1, 64)])
def test_fast_previews_are_one_pixel_per_latent_cell(tiny_bundle, monkeypatch, previews, preview_every, side):
    monkeypatch.setattr(vae, "LINEAR_PREVIEW_MIN_R2", -math.inf)  # the linear map counts as good for this VAE
    settings = replace(SMALL, previews=previews, preview_every=preview_every)
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
    shown = [f for f in frames if f.x0_image is not None]
    assert shown and all(f.x0_image.size == f.x_t_image.size == (side, side) for f in shown)
    assert frames[-1].image.size == (64, 64)  # the result always goes through the VAE
    with pytest.raises(ValueError, match="previews must be one of auto, fast, full, got 'quick'"):
        sample(tiny_bundle, conditioning(tiny_bundle), replace(SMALL, previews="quick"))


def test_the_fast_preview_map_is_the_best_linear_map_for_the_toy_vae(toy_engine):
    """On the toy's own images, which it was not fitted on, the map comes within 0.07 of the best linear map
    fitted to those very images, and far closer than no map (mid grey). The gap, and its colours on real runs, are
    why the toy's fast previews are VAE decodes (tests/test_preview.py)."""
    from core.toyworld.data import make_dataset
    bundle = toy_engine.bundle
    pictures = torch.cat([vae.from_pil(image) for image, _, _ in make_dataset(32, seed=5)])
    with torch.no_grad():
        codes = vae.encode(bundle, pictures)                                      # (32, 4, h, w)
        cells = torch.nn.functional.avg_pool2d(vae.decode(bundle, codes), bundle.vae_scale_factor)  # (32, 3, h, w)
    x = torch.cat([codes.permute(0, 2, 3, 1).reshape(-1, 4), torch.ones(codes[:, 0].numel(), 1)], 1)
    oracle = x @ torch.linalg.lstsq(x, cells.permute(0, 2, 3, 1).reshape(-1, 3)).solution
    best = (oracle.clamp(0, 1) - cells.permute(0, 2, 3, 1).reshape(-1, 3)).abs().mean()
    ours = (vae.linear_preview(bundle, codes) - cells).abs().mean()
    grey = (cells - 0.5).abs().mean()
    assert ours < best + 0.07 and ours < grey - 0.1, (ours, best, grey)  # 0.12, 0.06, 0.27


@pytest.mark.parametrize("name", ["lms", "euler", "ddim", "dpm++"])
def test_x0_is_the_prediction_from_x_t(tiny_bundle, name):
    """x_t is the UNet's input, (latents) / sqrt(sigma^2 + 1); x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    settings = Settings(**{**SMALL.__dict__, "guidance_scale": 1.0, "scheduler": name})
    cond = conditioning(tiny_bundle)
    eps = []
    hook = lambda state: eps.append(state.noise_pred)  # noqa: E731
    frames = list(sample(tiny_bundle, cond, settings, hooks=[hook]))
    for frame, noise in zip(frames, eps):
        alpha_bar = 1 / (frame.sigma**2 + 1)
        expected = (frame.x_t - math.sqrt(1 - alpha_bar) * noise) / math.sqrt(alpha_bar)
        assert (frame.x0 - expected).abs().max() < 1e-3 * max(1.0, expected.abs().max().item())
    assert frames[0].x_t.std() == pytest.approx(1.0, abs=0.2)  # pure noise, at the UNet's unit scale


def test_optim_with_plain_sgd_is_the_euler_sampler(tiny_bundle, monkeypatch):
    """The noise prediction as the gradient, the drop in sigma as the learning rate: SGD's step is Euler's."""
    monkeypatch.setattr(optim_sampler, "OPTIONS", {})
    monkeypatch.setattr(optim_sampler.OptimScheduler, "tolerance", 0.0)
    euler = list(sample(tiny_bundle, conditioning(tiny_bundle), replace(SMALL, scheduler="euler")))
    optim = list(sample(tiny_bundle, conditioning(tiny_bundle), replace(SMALL, scheduler="optim")))
    assert len(optim) == SMALL.steps and optim[-1].note is None
    assert torch.allclose(optim[-1].latents, euler[-1].latents, atol=1e-5)


@pytest.mark.parametrize("tolerance, steps", [(1e9, 1), (0.0, SMALL.steps)])
def test_optim_ends_the_run_once_the_noise_left_is_below_its_tolerance(tiny_bundle, monkeypatch, tolerance, steps):
    monkeypatch.setattr(optim_sampler.OptimScheduler, "tolerance", tolerance)
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), replace(SMALL, scheduler="optim", preview_every=0)))
    assert len(frames) == steps and frames[-1].image is not None
    assert [f.image is not None for f in frames].count(True) == 1
    if steps < SMALL.steps:  # stopped: the latents are the predicted x0, and the frame says why
        assert torch.equal(frames[-1].latents, frames[-1].x0)
        assert frames[-1].note.startswith(f"the optimiser stopped early at step 1 of {SMALL.steps}: the noise the "
                                          "UNet still finds (")


def test_with_momentum_each_optim_step_goes_on_by_half_the_step_before(tiny_bundle):
    first, second, third = list(sample(tiny_bundle, conditioning(tiny_bundle),
                                       replace(SMALL, scheduler="optim", preview_every=0)))[:3]
    expected = first.latents - (second.sigma - third.sigma) * (second.noise_pred + 0.5 * first.noise_pred)
    assert torch.allclose(second.latents, expected, atol=1e-5)


def test_seed_repeats_and_differs(tiny_bundle):
    cond = conditioning(tiny_bundle)
    a = list(sample(tiny_bundle, cond, SMALL))[-1].latents
    b = list(sample(tiny_bundle, cond, SMALL))[-1].latents
    c = list(sample(tiny_bundle, cond, Settings(**{**SMALL.__dict__, "seed": 4})))[-1].latents
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


def test_stop_ends_within_one_step(tiny_bundle, overlap):
    calls = []
    unet_forward = tiny_bundle.unet.forward
    stop = {"now": False}
    frames = sample(tiny_bundle, conditioning(tiny_bundle), SMALL, should_stop=lambda: stop["now"])
    tiny_bundle.unet.forward = lambda *a, **k: calls.append(1) or unet_forward(*a, **k)
    try:
        got = [next(frames), next(frames), next(frames)]
        stop["now"] = True
        made = len(calls)
        assert list(frames) == []
    finally:
        del tiny_bundle.unet.forward
    assert [f.index for f in got] == [0, 1, 2]
    assert len(calls) == made == (4 if overlap else 3)  # the step that delivers frame 2, and none after the stop


@pytest.mark.parametrize("previews", ["fast", "full"])
def test_previews_decoded_beside_the_next_step_equal_those_decoded_in_it(tiny_bundle, monkeypatch, previews):
    settings = replace(SMALL, previews=previews)
    decoders, decode_frame = set(), sampler._decode_frame
    monkeypatch.setattr(sampler, "_decode_frame", lambda *a: decoders.add(threading.current_thread().name)
                        or decode_frame(*a))
    runs = {}
    for overlapped in (False, True):
        monkeypatch.setattr(sampler, "_overlapped", lambda bundle: overlapped)
        runs[overlapped] = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
    assert {name.startswith("sdlens-decode") for name in decoders} == {False, True}
    for alone, beside in zip(*runs.values(), strict=True):
        assert alone.index == beside.index and torch.equal(alone.latents, beside.latents)
        assert [pixels(image) for image in (alone.x_t_image, alone.x0_image, alone.image)] == \
               [pixels(image) for image in (beside.x_t_image, beside.x0_image, beside.image)]
    assert runs[True][-1].image is not None


def test_runs_read_in_turns_share_one_decoding_thread_and_each_equals_its_run_alone(tiny_bundle, monkeypatch):
    """A comparison reads several runs a step each in turn: their previews queue on one thread."""
    decoders, decode_frame = set(), sampler._decode_frame
    monkeypatch.setattr(sampler, "_decode_frame", lambda *a: decoders.add(threading.current_thread().ident)
                        or decode_frame(*a))
    prompts = ["a red circle", "a blue star", "a green square"]
    alone = [list(sample(tiny_bundle, conditioning(tiny_bundle, prompt), SMALL)) for prompt in prompts]
    monkeypatch.setattr(sampler, "_overlapped", lambda bundle: True)
    decoders.clear()
    runs = [sample(tiny_bundle, conditioning(tiny_bundle, prompt), SMALL) for prompt in prompts]
    in_turns = list(zip(*runs, strict=True))
    assert len(decoders - {threading.get_ident()}) == 1
    for k, frames in enumerate(alone):
        assert [pixels(f.x0_image) for f in frames] == [pixels(step[k].x0_image) for step in in_turns]
        assert pixels(frames[-1].image) == pixels(in_turns[-1][k].image)


def test_the_decoding_thread_decodes_with_each_runs_count_of_threads(tiny_bundle, monkeypatch):
    """The one decoding thread, used first by a run on 1 torch thread, decodes a later run on 2 as that run would
    decode in its steps (another count of threads sums in another order)."""
    settings = replace(SMALL, previews="full")
    for count in (1, 2):
        runs = {}
        with torch_threads(count):
            for overlapped in (False, True):
                monkeypatch.setattr(sampler, "_overlapped", lambda bundle: overlapped)
                runs[overlapped] = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
        assert [pixels(f.x0_image) for f in runs[False]] == [pixels(f.x0_image) for f in runs[True]]


def pixels(image):
    return None if image is None else image.tobytes()


def test_previews_decode_beside_the_next_step_on_cuda_and_where_a_second_team_of_threads_fits(tiny_bundle,
                                                                                               monkeypatch):
    monkeypatch.setattr(sampler, "TORCH_THREADS", 2)  # a 2-core machine
    with torch_threads(1):  # as the app sets it there
        assert sampler._overlapped(tiny_bundle)
    with torch_threads(2):
        assert not sampler._overlapped(tiny_bundle)
    assert sampler._overlapped(SimpleNamespace(device=torch.device("cuda")))  # the step queues while a preview copies
    assert not sampler._overlapped(SimpleNamespace(device=torch.device("mps")))


def test_start_step_runs_the_rest_of_the_schedule(tiny_bundle):
    clean = torch.zeros(1, 4, 8, 8)
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), SMALL, start=Start(clean, 5)))
    assert [f.index for f in frames] == [5, 6, 7]
    assert frames[-1].image is not None


def test_the_loop_reports_the_latents_it_starts_from_before_its_first_step(tiny_bundle):
    clean = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = schedule.make_scheduler(tiny_bundle.scheduler_config, "lms", SMALL.steps, tiny_bundle.device, 5)
    noised = scheduler.add_noise(clean, initial_noise(tiny_bundle, SMALL), scheduler.timesteps[5:6])
    frames = sample(tiny_bundle, conditioning(tiny_bundle), SMALL, start=Start(clean, 5))
    assert torch.equal(frames.start, noised)  # as diffusers' img2img noises it, before any UNet call
    pure = sample(tiny_bundle, conditioning(tiny_bundle), SMALL)
    assert torch.equal(pure.start, initial_noise(tiny_bundle, SMALL) * scheduler.init_noise_sigma)
    first = next(frames)  # the first step denoises exactly those latents
    assert torch.equal(first.x_t, scheduler.scale_model_input(noised, scheduler.timesteps[5]))


def test_hooks_replace_latents_and_report_loss(tiny_bundle):
    seen = []

    def nudge(state):
        seen.append((state.index, state.sigma))
        if state.index == 2:
            return HookResult(latents=state.latents + 1.0, loss=0.5)
        return None

    cond = conditioning(tiny_bundle)
    plain = list(sample(tiny_bundle, cond, SMALL))
    hooked = list(sample(tiny_bundle, cond, SMALL, hooks=[nudge]))
    assert [i for i, _ in seen] == list(range(SMALL.steps))
    assert [f.loss for f in hooked] == [None, None, 0.5] + [None] * 5
    assert torch.equal(plain[1].latents, hooked[1].latents)
    assert (plain[2].latents - hooked[2].latents).abs().max() > 0.1


def test_hook_predict_noise_reproduces_the_step_prediction(tiny_bundle):
    diffs = []

    def check(state):
        diffs.append((state.predict_noise(state.latents) - state.noise_pred).abs().max().item())

    list(sample(tiny_bundle, conditioning(tiny_bundle), SMALL, hooks=[check]))
    assert max(diffs) == 0.0


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps must be a whole number from 1 to 200, got 0"),
    ({"steps": 500}, "got 500"),
    ({"guidance_scale": -1.0}, "guidance_scale must be from 0 to 50, got -1.0"),
    ({"guidance_scale": float("nan")}, "got nan"),
    ({"seed": -7}, "seed must be -1 (a random seed) or a whole number from 0 to 9007199254740991, got -7"),
    ({"seed": 2**53}, "got 9007199254740992"),  # a browser would round it
    ({"height": 100}, "height must be a multiple of 8 from 64 to 128, got 100"),
    ({"width": 4096}, "width must be from 64 to 128 pixels, got 4096"),
    ({"width": 32}, "got 32"),
    ({"preview_every": -1}, "preview_every must be from 0"),
    ({"scheduler": "heun"}, "scheduler must be one of lms, euler, ddim, dpm++, optim, got 'heun'"),
])
def test_validation_names_the_value(tiny_bundle, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sample(tiny_bundle, conditioning(tiny_bundle), Settings(**{**SMALL.__dict__, **change}))


def test_start_step_out_of_range(tiny_bundle):
    with pytest.raises(ValueError, match="start step must be from 0 to 7, got 8"):
        sample(tiny_bundle, conditioning(tiny_bundle), SMALL, start=Start(torch.zeros(1, 4, 8, 8), 8))


def test_engine_txt2img_random_seed_and_truncation_note(tiny_bundle):
    engine = Engine(tiny_bundle)
    run = engine.txt2img("a red circle " * 40, "", Settings(**{**SMALL.__dict__, "seed": RANDOM_SEED}))
    assert 0 <= run.settings.seed < 2**32  # a seed a person can read, and a page keeps exact
    with pytest.raises(ValueError, match=re.escape("seed must be -1 (a random seed) or a whole number from 0 to "
                                                   "9007199254740991, got -5")):
        engine.txt2img("a red circle", "", replace(SMALL, seed=-5))
    assert len(run.notes) == 1 and "longer than CLIP's 77 tokens" in run.notes[0]
    assert len(list(run.frames)) == SMALL.steps
    with pytest.raises(ValueError, match="prompt must be at most 4000 characters, got 5000"):
        engine.txt2img("x" * 5000, "", SMALL)


def test_engine_txt2img_equals_pipeline(tiny_bundle, tiny_pipeline):
    tiny_pipeline.scheduler = LMSDiscreteScheduler.from_config(tiny_bundle.scheduler_config)
    run = Engine(tiny_bundle).txt2img("a blue star", "green", SMALL)
    ref = pipeline_latents(tiny_pipeline, "a blue star", SMALL, negative_prompt="green")
    assert (list(run.frames)[-1].latents - ref).abs().max().item() <= 1e-6


def test_non_finite_latents_end_the_run_with_advice(tiny_bundle, overlap):
    poison = lambda state: HookResult(state.latents * float("nan")) if state.index == 2 else None  # noqa: E731
    frames = sample(tiny_bundle, conditioning(tiny_bundle), SMALL, hooks=[poison])
    got = [next(frames), next(frames)]
    with pytest.raises(RunFailed, match=r"NaN or infinite at step 3: lower the guidance scale \(now 7.5\)"):
        next(frames)
    assert [f.index for f in got] == [0, 1]


def test_x_t_is_what_the_unet_saw_even_when_a_hook_moves_the_latents(tiny_bundle):
    seen = []
    unet_forward = tiny_bundle.unet.forward
    tiny_bundle.unet.forward = lambda sample, *a, **k: seen.append(sample[:1].clone()) or unet_forward(sample, *a, **k)
    shift = lambda state: HookResult(state.latents + 1.0)  # noqa: E731
    try:
        frames = list(sample(tiny_bundle, conditioning(tiny_bundle), SMALL, hooks=[shift]))
    finally:
        del tiny_bundle.unet.forward
    assert len(seen) == SMALL.steps
    assert all(torch.equal(frame.x_t, input_) for frame, input_ in zip(frames, seen))


def test_cached_lms_equals_stock_lms_and_integrates_each_coefficient_once(tiny_bundle, monkeypatch):
    """Two runs of the same schedule: identical to diffusers' LMS, and the second run integrates nothing."""
    settings = replace(SMALL, steps=12, seed=9)
    stock = LMSDiscreteScheduler.from_config(tiny_bundle.scheduler_config)
    stock.set_timesteps(settings.steps)
    cond = conditioning(tiny_bundle)
    frames = list(sample(tiny_bundle, cond, settings))
    latents = initial_noise(tiny_bundle, settings) * stock.init_noise_sigma
    for taken, t in enumerate(stock.timesteps):
        x_t = stock.scale_model_input(latents, t)
        eps_u, eps_c = tiny_bundle.unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat(
            [cond.uncond, cond.cond])).sample.chunk(2)
        latents = stock.step(eps_u + settings.guidance_scale * (eps_c - eps_u), t, latents,
                             order=min(taken + 1, 4)).prev_sample
    assert torch.equal(frames[-1].latents, latents)
    integrals = []
    original = LMSDiscreteScheduler.get_lms_coefficient
    monkeypatch.setattr(LMSDiscreteScheduler, "get_lms_coefficient",
                        lambda self, *args: integrals.append(args) or original(self, *args))
    again = list(sample(tiny_bundle, cond, settings))
    assert integrals == [] and torch.equal(again[-1].latents, frames[-1].latents)


def test_a_run_whose_schedule_starts_low_says_so(toy_engine):
    """diffusers puts one LMS or Euler step at timestep 0, with the start noise scaled down to its sigma: the toy
    gives a flat field, and the run says why. A single DDIM step near 0 leaves noise. A run from pure noise is
    told, image to image at strength 1 too; image to image from mid-schedule, on purpose there, is not."""
    one = replace(toy_engine.default_settings(), steps=1, seed=0, preview_every=0)
    run = toy_engine.txt2img("a red circle", "", one)
    assert run.notes == ("lms with 1 step starts at timestep 0, not near 999: its start noise is scaled down to that "
                         "step's sigma (0.0292), so the UNet finds almost nothing to remove and the result is a "
                         "nearly flat field. From 2 steps it starts at 999.",)
    assert np.asarray(list(run.frames)[-1].image, dtype=float).std() < 25  # flat: a circle's picture is over 80
    ddim = toy_engine.txt2img("a red circle", "", replace(one, scheduler="ddim")).notes
    assert len(ddim) == 1 and ddim[0].startswith("ddim with 1 step starts at timestep ") and "stays noise" in ddim[0]
    assert toy_engine.txt2img("a red circle", "", replace(one, steps=2)).notes == ()
    assert toy_engine.txt2img("a red circle", "", replace(one, scheduler="dpm++")).notes == ()  # at 999
    square = Image.new("RGB", (64, 64))
    assert toy_engine.img2img("a red circle", "", square, 1.0, one).notes == run.notes
    assert toy_engine.img2img("a red circle", "", square, 0.5, replace(one, steps=4)).notes == ()
    assert toy_engine.views.schedule_table(1, "euler").note.startswith("euler with 1 step starts at timestep 0")
    assert toy_engine.views.schedule_table(30, "euler").note is None


def test_an_empty_prompt_runs_with_a_note_saying_so(tiny_bundle):
    engine = Engine(tiny_bundle)
    assert engine.txt2img("   ", "", SMALL).notes == ("The prompt is empty: CLIP encodes it as no text at all",)
    assert engine.txt2img("a red circle", "", SMALL).notes == ()
    mixed = engine.mix_prompts("a red circle", "", 0.5, "x " * 90, SMALL)
    assert [note.split(":")[0] for note in mixed.notes] == [
        "The negative prompt is longer than CLIP's 77 tokens; ignored", "Prompt B is empty"]


def test_words_the_toy_world_never_saw_are_named_before_the_run(toy_engine, tiny_bundle):
    """The toy world knows the words of its captions: a run names any other word in its prompts, once per run."""
    settings = replace(SMALL, steps=2)
    assert toy_engine.txt2img("A Red Circle, on a white background.", "blue", settings).notes == ()
    teal = "a <teal> star on a black background"  # the toy's learned token: its own word where it is loaded
    assert toy_engine.txt2img(teal, "", settings, learned=toy_engine.own_learned()).notes == ()
    assert "training: 'teal'" in toy_engine.txt2img(teal, "", settings).notes[0]  # else CLIP reads < teal >
    notes = toy_engine.txt2img("a cat in a hat, a red cat", "blurry", settings).notes
    assert len(notes) == 1 and notes[0].startswith(
        "The prompt has words this model never saw in training: 'cat', 'in', 'hat'; the negative prompt: 'blurry'. "
        "It knows shapes (circle, square, triangle, star, heart, cross), colours (red, ")
    mixed = toy_engine.mix_prompts("a red cat", "a red dog", 0.5, "blurry", settings).notes
    assert len(mixed) == 1 and mixed[0].startswith(  # one note for the three prompts
        "Prompt A has words this model never saw in training: 'cat'; prompt B: 'dog'; the negative prompt: 'blurry'")
    odd = toy_engine.txt2img("3 cafés, don't <dog> red-ish", "", settings).notes[0]
    assert odd.startswith("The prompt has words this model never saw in training: '3', 'cafés', \"don't\", 'dog', "
                          "'ish'")  # an unloaded <dog> is CLIP's dog
    assert Engine(tiny_bundle).txt2img("a cat in a hat", "blurry", settings).notes == ()  # any words: SD's own
    swapped = toy_engine.edit_token("a picture of a puppy", "", settings, 5, [("cat", 0.5), ("320", 0.5)])
    assert {run.notes for run in swapped} == {(  # both runs; a token id (320) is no word
        "The prompt has words this model never saw in training: 'puppy'; the words put in the token's place: 'cat'. "
        f"It knows {toy_engine.bundle.vocabulary.known}",)}
