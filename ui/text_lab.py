"""The "Text" tab: how a prompt becomes what the UNet reads, and what edits on the way do.

Sub-tabs: the tokens and their embeddings; swapping a token's embedding; mixing two tokens; textual
inversion; mixing two prompts. Every generation runs through the engine's one loop; only the
conditioning differs. Learned embeddings live in this session's state, never in the shared model.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from core import export
from core.code import Scripts
from core.engine import MAX_SWEEP, Engine
from ui.code_panel import CodePanel, Writers
from ui.common import GENERATE, Dropdown, Slider, number, user_errors, whole
from ui.run_view import (PANEL, Controls, PairView, RunView, checked_by_script, checked_first, idle_after,
                         image_panel, run_buttons, stop_flag, with_notes)
from ui.stops import StopFlags

SWEEP_FPS = 2  # a sweep has a few images: each stays half a second

BYTES_NOTE = ("CLIP's tokenizer reads bytes: a character outside plain ASCII (an accent, an emoji) shows as the "
              "symbols its UTF-8 bytes map to, as in ðŁĮŁ for 🌟.")
TOKEN_HEAT, POSITION_HEAT = "Token embeddings, a row per token", "Position embeddings of the same positions"
TOKEN_COLUMNS = [  # the token table's, shown before the first press too
    "position", "token id", "token", "|token embedding|", "|position embedding|"]


def heat_label(what: str, top: float | None = None) -> str:
    """A heat map's label; once a prompt is shown, with the value drawn in full blue or red (each map is
    stretched to its own largest |value|)."""
    return f"{what} (blue < 0 < red" + (f", full at ±{top:.3g})" if top is not None else ")")


def token_choices(engine: Engine, prompt: str, learned: dict) -> list[tuple[str, str]]:
    """The prompt's own tokens as dropdown choices: label "2: red", value "2" (its position)."""
    try:
        rows = engine.views.token_view(prompt, learned=learned).rows[1:-1]
    except ValueError:
        return []
    return [(f"{position}: {name.removesuffix('</w>')}", str(position)) for position, _, name, _, _ in rows]


def token_picker(engine: Engine, prompt: str, value: str | None, label: str, info: str | None = None):
    """A dropdown of the prompt's tokens that also takes a word of the prompt or a position typed in."""
    return Dropdown(token_choices(engine, prompt, {}), value=value, allow_custom_value=True, label=label, info=info)


@dataclass(frozen=True)
class Lab:
    """What every sub-tab shares: the engine, the stop flags, the generation settings, this session's learned
    embeddings ({token: vectors}, never the shared model's), the queue options of a generation and the tabs'
    script writers."""
    engine: Engine
    stops: StopFlags
    controls: Controls
    learned: gr.State
    options: dict
    writers: Writers

    def edited(self, prompt: str, token: str, parts: list, settings, learned: dict, flag) -> tuple[int, tuple]:
        """The token's position, and the runs of the prompt as written and with that token's embedding made of
        `parts` ((word or learned token, weight) pairs), from the same seed."""
        position = self.engine.position_of(prompt, token, learned=learned)
        return position, self.engine.edit_token(prompt, "", settings, position, parts, learned=learned,
                                                should_stop=flag.is_set)

    def edit_script(self, prompt: str, token: str, parts: list, settings, learned: dict, title: str) -> str:
        """The same pair of runs as a script: both images, side by side."""
        position = self.engine.position_of(prompt, token, learned=learned)
        return Scripts(self.engine).edit_token(prompt, "", settings, position, parts, learned=learned, title=title)


def prompt_and_token(lab: Lab, tab: str, label: str, info: str | None = None) -> tuple[list, gr.Textbox, gr.Dropdown]:
    """The tab's first example, a prompt box holding its prompt and a picker of that prompt's tokens."""
    first = lab.engine.examples(tab)[0]
    prompt = gr.Textbox(label="Prompt", value=first[0])
    return first, prompt, token_picker(lab.engine, first[0], first[1], label, info)


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> tuple[gr.State, gr.Tabs]:
    """Returns this session's learned embeddings, and the sub-tabs (for links to them)."""
    learned = gr.State(engine.own_learned())  # each session starts with the model's own
    with gr.Accordion("Generation settings for every experiment on this tab", open=False):
        controls = Controls(engine)
    lab = Lab(engine, stops, controls, learned, {"concurrency_id": GENERATE, "concurrency_limit": concurrency},
              writers)
    with gr.Tabs() as sub_tabs:
        with gr.Tab("Tokens and embeddings", id="tokens", elem_id="text-tokens"):
            build_tokens(lab)
        with gr.Tab("Swap a token", id="swap", elem_id="text-swap"):
            swap = build_swap(lab)
        with gr.Tab("Mix two tokens", id="mix", elem_id="text-mix"):
            mix = build_mix_tokens(lab)
        with gr.Tab("Textual inversion", id="ti", elem_id="text-ti"):
            inversion = build_textual_inversion(lab)
        with gr.Tab("Mix two prompts", id="prompts", elem_id="text-prompts"):
            build_mix_prompts(lab)
    for prompt_box, picker in (swap, mix, inversion):  # the token pickers follow their prompts
        prompt_box.change(lambda p, s: gr.update(choices=token_choices(engine, p, s)), [prompt_box, learned], picker,
                          api_visibility="private", queue=False)
    return learned, sub_tabs


def build_tokens(lab: Lab) -> None:
    engine = lab.engine
    with gr.Row():
        token_prompt = gr.Textbox(label="Prompt", value=engine.examples("swap_token")[0][0], scale=4)
        show = gr.Button("Show the tokens", variant="primary", scale=1)
    with gr.Row():
        table = gr.Dataframe(label="Tokens as the text encoder reads them", elem_id="tokens-table", wrap=True,
                             headers=TOKEN_COLUMNS,
                             column_widths=["14%", "14%", "32%", "20%", "20%"], max_height=520, scale=3)
        with gr.Column(scale=2):
            proof = gr.Markdown(elem_id="tokens-proof", label="Checked against the text encoder")
            token_heat = gr.Image(label=heat_label(TOKEN_HEAT), format="png",
                                  elem_classes=["pixels", "below-label"], height=PANEL * 3 // 4, elem_id="tokens-heat")
            position_heat = gr.Image(label=heat_label(POSITION_HEAT), format="png",
                                     elem_classes=["pixels", "below-label"], height=PANEL * 3 // 4,
                                     elem_id="tokens-positions")

    def tokenize(prompt, learned):
        """A prompt's tokens (position, id, token, embedding norms), the embeddings as heat maps, and the
        proof that the encoder run by hand on them equals the text encoder."""
        with user_errors():
            view = engine.views.token_view(prompt, learned=learned)
        rows = [[position, "learned" if token is None else token, name, round(norm, 3), round(pos, 3)]
                for position, token, name, norm, pos in view.rows]
        if view.padding:
            rows.append(["...", "", f"{view.padding} x <|endoftext|> (padding to {len(view.rows) + view.padding})",
                         "", ""])
        text = (f"token + position embeddings → encoder with its causal mask → final layer norm, against "
                f"`text_encoder(input_ids)`: max abs difference **{view.max_diff:.2g}**. Without the causal mask "
                f"(every token seeing the later ones too): **{view.max_diff_without_mask:.3g}**.")
        if view.truncated:
            text += f"  \n⚠️ Past CLIP's 77 tokens, ignored: “{view.truncated}”"
        if not prompt.isascii():
            text += f"  \n{BYTES_NOTE}"
        return (pd.DataFrame(rows, columns=TOKEN_COLUMNS), text,
                gr.Image(view.token_heat, label=heat_label(TOKEN_HEAT, view.token_range)),
                gr.Image(view.position_heat, label=heat_label(POSITION_HEAT, view.position_range)))

    gr.on([show.click, token_prompt.submit], tokenize, [token_prompt, lab.learned],
          [table, proof, token_heat, position_heat], api_name="tokenize")


def build_swap(lab: Lab) -> tuple[gr.Textbox, gr.Dropdown]:
    """Returns the prompt box and its token picker."""
    engine, controls = lab.engine, lab.controls
    with gr.Row():
        with gr.Column(scale=2):
            first, swap_prompt, swap_token_box = prompt_and_token(lab, "swap_token", "The token to replace",
                                                                  "a word of the prompt, or its position")
            replacement = gr.Textbox(label="Put this word there", value=first[2],
                                     info="one token, or a token id such as 2368")
            swap_go, swap_stop = run_buttons("Generate both", lab.stops)
            gr.Examples(engine.examples("swap_token"), [swap_prompt, swap_token_box, replacement],
                        example_labels=[f"{p}: {t} → {r}" for p, t, r in engine.examples("swap_token")])
        with gr.Column(scale=3):
            swap_view = PairView("swap", lab.stops, "As written", "Swapped")
            code = CodePanel(lab.writers, "swap_token", ("text", "swap"), "swap")

    def swap_token(prompt, token, replacement, steps, guidance_scale, seed, width, height, preview_every,
                   previews, scheduler, learned, request: gr.Request):
        """The prompt as written and with one token's embedding swapped for another word's, same seed."""
        with stop_flag(lab.stops, request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                position, runs = lab.edited(prompt, token, [(replacement, 1.0)], settings, learned, flag)
            yield from swap_view.stream(runs, flag, f"token {position} → {replacement!r}")

    def swap_token_code(prompt, token, replacement, steps, guidance_scale, seed, width, height, preview_every,
                        previews, scheduler, learned):
        """The run as a script: both images, side by side."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return lab.edit_script(prompt, token, [(replacement, 1.0)], settings, learned, "A token swapped")

    inputs = [swap_prompt, swap_token_box, replacement, *controls.inputs, lab.learned]
    run = checked_by_script(swap_go, swap_token_code, inputs, lab.stops, swap_stop).success(
        swap_token, inputs, swap_view.outputs, api_name="swap_token", **lab.options)
    idle_after(swap_stop, (run,), lab.stops)
    code.after(run, swap_token_code, inputs, swap_view)
    return swap_prompt, swap_token_box


def build_mix_tokens(lab: Lab) -> tuple[gr.Textbox, gr.Dropdown]:
    """Returns the prompt box and its token picker."""
    engine, controls = lab.engine, lab.controls
    with gr.Row():
        with gr.Column(scale=2):
            first, mix_prompt, mix_token_box = prompt_and_token(lab, "mix_tokens", "The token to replace with the mix")
            with gr.Row():
                word_a = gr.Textbox(label="Word A", value=first[2])
                word_b = gr.Textbox(label="Word B", value=first[3])
            weight = Slider(0, 1, value=first[4], step=0.05, label="Weight of A",
                            info="the mix is weight x A + (1 - weight) x B")
            mix_go, mix_stop = run_buttons("Generate both", lab.stops)
            gr.Examples(engine.examples("mix_tokens"), [mix_prompt, mix_token_box, word_a, word_b, weight],
                        example_labels=[f"{p}: {a} + {b}" for p, _, a, b, _ in engine.examples("mix_tokens")])
        with gr.Column(scale=3):
            mix_view = PairView("mix", lab.stops, "As written", "Mixed")
            code = CodePanel(lab.writers, "mix_tokens", ("text", "mix"), "mix")

    def mix_tokens(prompt, token, word_a, word_b, weight, steps, guidance_scale, seed, width, height,
                   preview_every, previews, scheduler, learned, request: gr.Request):
        """The prompt as written and with one token's embedding replaced by weight x A + (1 - weight) x B."""
        with stop_flag(lab.stops, request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                w = mix_weight(weight)
                position, runs = lab.edited(prompt, token, [(word_a, w), (word_b, 1 - w)], settings, learned, flag)
            yield from mix_view.stream(runs, flag, f"token {position} → {w:g} x {word_a!r} + {1 - w:g} x {word_b!r}")

    def mix_tokens_code(prompt, token, word_a, word_b, weight, steps, guidance_scale, seed, width, height,
                        preview_every, previews, scheduler, learned):
        """The run as a script: both images, side by side."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        w = mix_weight(weight)
        return lab.edit_script(prompt, token, [(word_a, w), (word_b, 1 - w)], settings, learned, "Two tokens mixed")

    inputs = [mix_prompt, mix_token_box, word_a, word_b, weight, *controls.inputs, lab.learned]
    run = checked_by_script(mix_go, mix_tokens_code, inputs, lab.stops, mix_stop).success(
        mix_tokens, inputs, mix_view.outputs, api_name="mix_tokens", **lab.options)
    idle_after(mix_stop, (run,), lab.stops)
    code.after(run, mix_tokens_code, inputs, mix_view)
    return mix_prompt, mix_token_box


def mix_weight(weight) -> float:
    w = number(weight, "weight")
    if not 0 <= w <= 1:
        raise ValueError(f"weight must be from 0 to 1, got {w}")
    return w


@dataclass(frozen=True)
class InversionForm:
    """The textual-inversion sub-tab's inputs."""
    upload: gr.File
    examples_button: gr.Button
    loaded: gr.Markdown
    prompt: gr.Textbox
    token: gr.Dropdown
    learned_token: gr.Dropdown
    go: gr.Button
    stop: gr.Button


def inversion_form(lab: Lab) -> InversionForm:
    engine = lab.engine
    first = engine.examples("textual_inversion")[0]
    upload = gr.File(label="Load embeddings (learned_embeds.safetensors / .bin, or a .pt)",
                     file_types=[".safetensors", ".bin", ".pt"], elem_id="ti-upload")
    examples_button = gr.Button("Back to the embeddings made for this model alone", size="sm",
                                visible=bool(engine.example_embeddings()))
    text, names = describe_learned(engine, lab.learned.value)  # the model's own, which each session starts with
    loaded = gr.Markdown(text, elem_id="ti-loaded", label="Loaded embeddings")
    ti_prompt = gr.Textbox(label="Prompt", value=first[0], info="write a loaded token (e.g. <teal>) in it ...")
    ti_token_box = token_picker(engine, first[0], first[1], "... or put a loaded token in place of",
                                "a word of the prompt (the notebook's way); empty: as written")
    ti_learned_token = Dropdown(names, value=names[0] if names else None, label="The loaded token to put there",
                                allow_custom_value=True)
    ti_go, ti_stop = run_buttons("Generate both", lab.stops)
    gr.Examples(engine.examples("textual_inversion"), [ti_prompt, ti_token_box],
                example_labels=[f"{p}" + (f": {t} → the loaded token" if t else "")
                                for p, t in engine.examples("textual_inversion")])
    return InversionForm(upload, examples_button, loaded, ti_prompt, ti_token_box, ti_learned_token, ti_go, ti_stop)


def build_textual_inversion(lab: Lab) -> tuple[gr.Textbox, gr.Dropdown]:
    """Returns the prompt box and its token picker."""
    engine, controls = lab.engine, lab.controls
    with gr.Row():
        with gr.Column(scale=2):
            form = inversion_form(lab)
        with gr.Column(scale=3):
            ti_view = PairView("ti", lab.stops, "Without the learned embeddings", "With them")
            code = CodePanel(lab.writers, "textual_inversion", ("text", "ti"), "ti")
    wire_loading(lab, form)

    def textual_inversion(prompt, token, learned_token, steps, guidance_scale, seed, width, height,
                          preview_every, previews, scheduler, learned, request: gr.Request):
        """With a token in place of a word: the prompt as written beside the learned vector at that word.
        Without: the prompt with its learned tokens beside the same prompt with them as plain text."""
        with stop_flag(lab.stops, request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                check_learned(learned, prompt, token, learned_token)
                if token:
                    position, runs = lab.edited(prompt, token, [(learned_token, 1.0)], settings, learned, flag)
                    about = f"token {position} → `{learned_token}`"
                else:
                    runs = (engine.txt2img(prompt, "", settings, should_stop=flag.is_set),
                            engine.txt2img(prompt, "", settings, should_stop=flag.is_set, learned=learned))
                    about = "the learned tokens as plain text (left) and as learned (right)"
            yield from ti_view.stream(runs, flag, about)

    def textual_inversion_code(prompt, token, learned_token, steps, guidance_scale, seed, width, height,
                               preview_every, previews, scheduler, learned):
        """The run as a script: with a token, both images side by side; without, the image with the learned
        embeddings."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        check_learned(learned, prompt, token, learned_token)
        if token:
            return lab.edit_script(prompt, token, [(learned_token, 1.0)], settings, learned,
                                   "A learned embedding in place of a token")
        return Scripts(engine).txt2img(prompt, "", settings, learned=learned,
                                       title="Text to image with learned embeddings")

    inputs = [form.prompt, form.token, form.learned_token, *controls.inputs, lab.learned]
    run = checked_by_script(form.go, textual_inversion_code, inputs, lab.stops, form.stop).success(
        textual_inversion, inputs, ti_view.outputs, api_name="textual_inversion", **lab.options)
    idle_after(form.stop, (run,), lab.stops)
    code.after(run, textual_inversion_code, inputs, ti_view)
    return form.prompt, form.token


def check_learned(learned: dict, prompt: str, token: str, learned_token: str) -> None:
    """A run that uses a loaded token: put in place of `token`, or (without one) written in the prompt; two runs
    of a prompt without one would be the same picture twice."""
    if not learned:
        raise ValueError("No embeddings are loaded: this model ships none; upload a file (/load_embedding)")
    if token and learned_token not in learned:
        raise ValueError(f"{learned_token!r} is not loaded; loaded: {', '.join(learned)}")
    if not token and not any(name in prompt for name in learned):
        raise ValueError(f"The prompt {prompt!r} holds none of the loaded tokens ({', '.join(learned)}): write one "
                         f"in it, or name a word of it to put a loaded token in its place")


def describe_learned(engine: Engine, learned: dict) -> tuple[str, list[str]]:
    """What a session has loaded, in words, and its tokens' names."""
    counts = engine.learned_sizes(learned)
    names = sorted(counts)
    text = ("Loaded (for you only): " + ", ".join(f"`{n}` ({counts[n]} vector{'s' if counts[n] > 1 else ''})"
                                                 for n in names) if names else "No embeddings loaded yet.")
    return text, names


def wire_loading(lab: Lab, form: InversionForm) -> None:
    """Loading embeddings from a file into this session's, or going back to the model's own."""
    engine, own = lab.engine, lab.learned.value  # the model's own, read once: every session starts with them

    def describe(session_learned: dict) -> tuple[str, dict]:
        text, names = describe_learned(engine, session_learned)
        return text, gr.update(choices=names, value=names[0] if names else None)

    def read_file(file) -> dict:
        if file is None:
            raise ValueError("There is no file: upload learned_embeds.safetensors, .bin or .pt")
        return engine.load_learned(file)

    def check_file(file):
        """Refuse a bad file with a message before it is loaded, leaving what is loaded and shown as it is."""
        with user_errors():
            read_file(file)

    def load_embedding(file, session_learned):
        """Add the textual-inversion embeddings of a file to this session's."""
        with user_errors():
            session_learned = {**session_learned, **read_file(file)}
        return session_learned, *describe(session_learned)

    def load_examples():
        """This session's embeddings back to those made for this model (its folder's embeddings/), which it
        starts with: an uploaded file's are dropped."""
        with user_errors():
            if not own:
                raise ValueError("This model has no embeddings of its own: upload a file (/load_embedding)")
        return own, *describe(own)

    outputs = [lab.learned, form.loaded, form.learned_token]
    checked = form.upload.upload(check_file, form.upload, None, api_visibility="private")
    checked.failure(lambda: None, None, form.upload, queue=False, api_visibility="private")  # the refused file goes
    checked.success(load_embedding, [form.upload, lab.learned], outputs, api_name="load_embedding")
    form.examples_button.click(load_examples, None, outputs, api_name="load_model_embeddings")


def build_mix_prompts(lab: Lab) -> None:
    engine, controls = lab.engine, lab.controls
    first = engine.examples("mix_prompts")[0]
    with gr.Row():
        with gr.Column(scale=2):
            prompt_a = gr.Textbox(label="Prompt A", value=first[0])
            prompt_b = gr.Textbox(label="Prompt B", value=first[1])
            factor = Slider(0, 1, value=first[2], step=0.05, label="Mix factor: the weight of A",
                            info="the notebook's mix_factor: factor x encoding(A) + (1 - factor) x encoding(B)")
            prompts_go, prompts_stop = run_buttons()
            with gr.Row():
                count = Slider(2, MAX_SWEEP, value=6, step=1, label="Images in the sweep")
                sweep_fps = Slider(1, export.MAX_FPS, value=SWEEP_FPS, step=1, label="GIF frames per second")
            sweep_go = gr.Button("Sweep from A to B (same seed)")
            # the sweep's results under its button, where they are seen as they come; hidden until a sweep runs
            strip = gr.Gallery(label="From A to B", columns=6, height=PANEL // 2 + 90, elem_id="prompts-strip",
                               format="png", elem_classes=["pixels", "columns-6"], object_fit="contain",
                               interactive=False, visible=False)
            sweep_gif = image_panel("The sweep as a GIF", "prompts-gif", type="filepath", visible=False)
            gr.Examples(engine.examples("mix_prompts"), [prompt_a, prompt_b, factor])
        with gr.Column(scale=3):
            prompts_view = RunView("prompts", lab.stops, "Press Generate to watch the mixed prompt denoise.")
            code = CodePanel(lab.writers, "mix_prompts", ("text", "prompts"), "prompts")

    def mix_prompts(prompt_a, prompt_b, factor, steps, guidance_scale, seed, width, height, preview_every,
                    previews, scheduler, learned, request: gr.Request):
        """Generate from a mix of two prompts' encodings, streaming x_t and x0."""
        with prompts_view.stop_flag(request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                f = number(factor, "mix factor")
                run = engine.mix_prompts(prompt_a, prompt_b, f, "", settings, learned=learned, should_stop=flag.is_set)
            yield from prompts_view.stream(run, flag, f" · {f:g} x A + {1 - f:g} x B")

    def mix_prompts_code(prompt_a, prompt_b, factor, steps, guidance_scale, seed, width, height, preview_every,
                         previews, scheduler, learned):
        """The run as a script."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).mix_prompts(prompt_a, prompt_b, number(factor, "mix factor"), "", settings,
                                           learned=learned)

    inputs = [prompt_a, prompt_b, factor, *controls.inputs, lab.learned]
    prompts_view.wire(prompts_stop, stop_api=None)
    run = checked_by_script(prompts_go, mix_prompts_code, inputs, lab.stops, prompts_stop).success(
        mix_prompts, inputs, prompts_view.outputs, api_name="mix_prompts", **lab.options)
    code.after(run, mix_prompts_code, inputs, prompts_view)
    prompt_sweep, check_sweep = sweep_handlers(lab)
    sweep_inputs = [prompt_a, prompt_b, count, sweep_fps, *controls.inputs, lab.learned]
    sweep = checked_first(sweep_go, check_sweep, sweep_inputs, lab.stops, prompts_stop).success(
        prompt_sweep, sweep_inputs, [strip, sweep_gif, prompts_view.status], api_name="prompt_sweep", **lab.options)
    idle_after(prompts_stop, (run, sweep), lab.stops)


def sweep_handlers(lab: Lab):
    """The sweep from A to B, and the check of its inputs before it starts."""
    engine, controls = lab.engine, lab.controls

    def check_sweep(prompt_a, prompt_b, count, fps, steps, guidance_scale, seed, width, height, preview_every,
                    previews, scheduler, learned):
        """Reject bad inputs with a message before the sweep starts (the last strip stays)."""
        with user_errors():
            export.check_fps(number(fps, "frames per second"))
            engine.check_sweep(prompt_a, prompt_b, "", controls.settings(
                steps, guidance_scale, seed, width, height, preview_every, previews, scheduler), whole(count, "count"))

    def prompt_sweep(prompt_a, prompt_b, count, fps, steps, guidance_scale, seed, width, height, preview_every,
                     previews, scheduler, learned, request: gr.Request):
        """The mix from A to B (factors from 1 down to 0) with the same seed, as a strip and a GIF."""
        with stop_flag(lab.stops, request) as flag:
            with user_errors():
                fps, count = export.check_fps(number(fps, "frames per second")), whole(count, "count")
                settings = engine.check_sweep(prompt_a, prompt_b, "", controls.settings(  # its seed drawn once
                    steps, guidance_scale, seed, width, height, preview_every, previews, scheduler), count)
                shown, notes = [], {}

                def status(state: str) -> str:
                    return with_notes(f"sweep from A to B · image {len(shown)} of {count} · {state} · seed "
                                      f"{settings.seed}", notes)

                yield gr.update(value=[], visible=True), gr.update(value=None, visible=True), status("running")
                for mix, image, said in engine.prompt_sweep(prompt_a, prompt_b, "", settings, count,
                                                            learned=learned, should_stop=flag.is_set):
                    shown.append((image, f"{mix:.2f}"))
                    notes |= dict.fromkeys(said)
                    yield shown, None, status(f"mix factor {mix:.2f} · running")
            last = status("done" if len(shown) == count else "stopped")
            if not shown:
                yield shown, None, last
                return
            with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:
                path = Path(folder) / "sdlens-prompt-sweep.gif"
                frames = [export.video_frame([image], f"mix factor {mix}") for image, mix in shown]
                yield shown, str(export.write_gif(frames, path, fps)), last

    return prompt_sweep, check_sweep

