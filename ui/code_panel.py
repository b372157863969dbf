"""Show the code and links: each generating tab's last run as a self-contained script (core.code) and as a
link that reopens the tab with the run's settings; `/code` writes the script of any tab's run from that tab's
own named parameters."""
from __future__ import annotations

import html
import inspect
import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import gradio as gr
import numpy as np
from PIL import Image

from core.code import Unscriptable
from core.sampler import MAX_SEED, RANDOM_SEED
from ui.common import choice_values, number, user_errors

LABEL = "This run as a script (diffusers, transformers and torch only): python script.py OUT.png"
IDLE = "# The script of this tab's run appears here when a run ends."
UNLINKED = ("learned", "image")  # session state and uploads: a link cannot carry them
# The query string the server writes, made a whole link in the browser (the page knows its own address,
# a gradio.live one included).
FULL_LINK = "(query) => query ? window.location.origin + window.location.pathname + query : ''"

HISTORY = 20            # runs a session's history keeps
RUN_KINDS = {"txt2img": "text to image", "img2img": "image to image", "swap_token": "token swap",
             "mix_tokens": "token mix", "textual_inversion": "textual inversion", "mix_prompts": "prompt mix",
             "guided": "guidance", "attention": "attention", "cfg_parts": "guidance taken apart",
             "cfg_sweep": "scales", "compare_samplers": "samplers", "compare_seeds": "seeds"}  # history captions
THUMBNAIL = 128         # pixels on the longer side of a history thumbnail
CAPTION_PROMPT = 80     # characters of a run's prompts kept in its history caption
EDITS = {"swap_token": "{token} → {replacement}", "mix_tokens": "{token} → {weight:g} {word_a} + {rest:g} {word_b}",
         "textual_inversion": "{token} → {learned_token}", "mix_prompts": "{factor:g} A + {rest:g} B"}  # the edit run

Writer = Callable[..., str]  # a tab's named parameters (those of its endpoint) -> the script of that run


@dataclass(frozen=True)
class Experiment:
    """A tab that writes its runs as code: its writer, the inputs it reads (in the writer's order) and where
    it sits on the page (the top-level tab's id, then a sub-tab's)."""
    writer: Writer
    inputs: list
    place: tuple[str, ...]

    def names(self) -> list[str]:
        return list(inspect.signature(self.writer).parameters)


class CodePanel:
    """The script of the tab's last run, highlighted, with Copy and Download (.py) buttons, and its link."""

    def __init__(self, writers: Writers, tab: str, place: tuple[str, ...], elem: str | None = None):
        """`tab`: the name of the tab's endpoint; `place`: the ids of the tab (and sub-tab) it sits in."""
        self.writers, self.tab, self.place, elem = writers, tab, place, elem or tab
        with gr.Accordion("Show the code", open=False, elem_id=f"{elem}-code-box"):
            self.link = gr.Textbox(label="Link to this experiment: opens this tab with this run's settings",
                                   interactive=False, buttons=["copy"], elem_id=f"{elem}-link",
                                   placeholder="appears when a run ends")
            self.code = gr.Code(IDLE, language="python", label=LABEL, interactive=False, max_lines=40, wrap_lines=True,
                                buttons=["copy", "download"], elem_id=f"{elem}-code")
            self.download = gr.DownloadButton("Download this run (.zip): its images, settings and code",
                                              size="sm", elem_id=f"{elem}-zip")

    def after(self, run: gr.events.Dependency, writer: Writer, inputs: list, view) -> None:
        """Once `run` succeeds, its script, its link and its place in the session's history: `writer` of the
        run's `inputs`, with the seed (and a comparison's entries) the run reported in `view.progress` (a random
        seed is drawn by the run); the history shows `view.thumbnail` of what the view keeps."""
        self.writers.experiments[self.tab] = Experiment(writer, inputs, self.place)
        tab, history = self.tab, self.writers.history

        kept = len(view.kept)

        def show(*values):
            given, (reported, runs), shown = values[:len(inputs)], values[len(inputs):-kept], values[-kept:]
            arguments = inspect.signature(writer).bind(*given).arguments
            if reported and reported.get("seed") is not None:
                arguments["seed"] = reported["seed"]
            if reported and reported.get("entries") and "entries" in arguments:  # a comparison's seeds as drawn
                arguments["entries"] = ", ".join(reported["entries"])
            with user_errors():
                try:
                    script = writer(**arguments)
                except Unscriptable as err:
                    script = f"# No script for this run: {err}\n"
            linked = {name: value for name, value in arguments.items() if name not in UNLINKED}
            runs = history.add(runs, tab, linked, view.thumbnail(*shown))
            with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:
                # gradio copies the zip into its own (expiring) cache before this generator resumes
                archive = Path(folder) / f"sdlens-{tab}-seed{arguments.get('seed')}.zip"
                write_archive(archive, {"tab": tab, **linked}, script, view.files(*shown))
                query = urlencode({"tab": tab, **linked}, doseq=True)  # a list (checkboxes): its name repeated
                yield script, "?" + query, runs, history.shown(runs), str(archive)

        run.success(show, [*inputs, view.progress, history.state, *view.kept],
                    [self.code, self.link, history.state, history.gallery, self.download],
                    api_visibility="private", queue=False).then(None, self.link, self.link, js=FULL_LINK)


def write_archive(path: Path, settings: dict, script: str, files: list[tuple[str, object]]) -> None:
    """A run's download: settings.json (what its link carries), script.py, and its images (arrays, or files
    that are still in the cache)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("settings.json", json.dumps(settings, indent=2) + "\n")
        archive.writestr("script.py", script)
        for name, image in files:
            if isinstance(image, str):
                if Path(image).exists():
                    archive.write(image, name)
            elif image is not None:
                with archive.open(name, "w") as out:
                    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(out, format="png")


class History:
    """A session's last runs, newest first: a thumbnail and the settings each, shown as a gallery."""

    def __init__(self):
        self.state = gr.State([])  # [{"tab": ..., "settings": {...}, "thumbnail": array, "caption": ...}]
        self.gallery = gr.Gallery(label=f"Your last {HISTORY} runs: click one to reopen its tab with its settings",
                                  columns=10, height=240, allow_preview=False, object_fit="contain", format="png",
                                  elem_id="history", elem_classes="pixels", render=False)

    @staticmethod
    def add(runs: list, tab: str, settings: dict, image) -> list:
        if image is None:  # a run stopped before its end
            return runs
        thumbnail = Image.fromarray(np.asarray(image, dtype=np.uint8))
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        entry = {"tab": tab, "settings": settings, "thumbnail": np.asarray(thumbnail),
                 "caption": History.caption(tab, settings)}
        return [entry, *runs][:HISTORY]

    @staticmethod
    def caption(tab: str, settings: dict) -> str:
        """What a run was, its prompts last (the part the page's three lines may cut), e.g. "prompt mix · seed 32:
        a red circle + a blue star", "seeds · 1, 2: a red circle"."""
        prompts = " + ".join(str(settings[k]) for k in ("prompt", "prompt_a", "prompt_b") if k in settings)
        prompts = prompts if len(prompts) <= CAPTION_PROMPT else prompts[:CAPTION_PROMPT - 1].rstrip() + "…"
        which = settings["entries"] if "entries" in settings else f"seed {settings.get('seed')}"
        return " · ".join(filter(None, [RUN_KINDS.get(tab, tab), History.edit(tab, settings), which])) + f": {prompts}"

    @staticmethod
    def edit(tab: str, settings: dict) -> str | None:
        """A text lab run's edit, as "red → blue" (a word swapped) or "token 2 → blue" (a token picked from the
        menu, by its position, as the run's status names it); None for other runs, and for textual inversion with
        no word named (its token is in the prompt)."""
        if tab not in EDITS or (tab == "textual_inversion" and not settings.get("token")):
            return None
        token = str(settings.get("token"))
        weight = number(settings.get("weight", settings.get("factor", 0)), "weight")  # a script may send text
        return EDITS[tab].format(**{**settings, "weight": weight, "factor": weight, "rest": 1 - weight,
                                    "token": f"token {token}" if token.isdigit() else token})

    @staticmethod
    def shown(runs: list) -> list:
        return [(entry["thumbnail"], entry["caption"]) for entry in runs]


class Writers:
    """Every tab that writes its runs as code, by the name of its endpoint: served as `/code`, reopened from a
    link or from the session's history."""

    def __init__(self):
        """Within the page's Blocks, before the tabs: the history's gallery is placed by `wire`."""
        self.experiments: dict[str, Experiment] = {}
        self.history = History()

    def wire(self, demo: gr.Blocks, learned: gr.State, tabs: gr.Tabs, sub_tabs: dict[str, gr.Tabs]) -> None:
        """`/code`, the page load that applies a link, and the history (placed here, at the end of the page);
        `learned` is the session's learned embeddings (for the tabs that take them), `tabs` the page's tabs and
        `sub_tabs` the tabs inside some of them, by id."""
        with gr.Row(visible=False):
            tab, parameters, script = gr.Textbox(), gr.JSON(), gr.Code(language="python", label="Script")
        gr.Button(visible=False).click(self.code, [tab, parameters, learned], script, api_name="code", queue=False)
        shown = list({id(c): c for e in self.experiments.values() for c in e.inputs if not isinstance(c, gr.State)}
                     .values())
        outputs = [tabs, *sub_tabs.values(), *shown]

        def open_link(request: gr.Request) -> dict:
            """A link's tab opened, and its settings put in that tab's inputs."""
            query = {}
            for name, value in request.query_params.multi_items():  # checkboxes: a name given for each one
                query.setdefault(name, []).append(value)
            return self.reopen(query.pop("tab", [""])[-1], query, tabs, sub_tabs)

        def open_run(runs: list, selected: gr.SelectData) -> dict:
            """A run of the history: its tab opened with its settings (the pictures there stay the last run's)."""
            entry = runs[selected.index]
            caption = html.escape(entry["caption"], quote=False)  # a toast is HTML: a learned <teal> stays in it
            gr.Info(f"The settings of “{caption}” are back in its tab: run it again to see its pictures")
            return self.reopen(entry["tab"], entry["settings"], tabs, sub_tabs)

        demo.load(open_link, None, outputs, api_visibility="private")  # queued: its messages show
        with gr.Accordion("History", open=True):
            self.history.gallery.render()
        # queued, so that its message shows; then the page scrolls up to the tab opened
        self.history.gallery.select(open_run, self.history.state, outputs, api_visibility="private").success(
            None, js="() => document.getElementById('tabs').scrollIntoView({block: 'start'})")

    def code(self, tab: str, parameters: dict, session_learned: dict):
        """The script of a run of `tab` (an endpoint's name, e.g. txt2img) with `parameters` (that endpoint's
        named parameters, as a JSON object; those left out take the tab's defaults, as the endpoint's do)."""
        with user_errors():
            if tab not in self.experiments:
                raise ValueError(f"tab must be one of {', '.join(self.experiments)}, got {tab!r}")
            experiment = self.experiments[tab]
            if not isinstance(parameters, dict):
                raise ValueError(f"parameters must be a JSON object of {tab}'s named parameters, got {parameters!r}")
            named = [name for name in experiment.names() if name != "learned"]
            defaults = {name: default for name, default in zip(experiment.names(), map(default_of, experiment.inputs))
                        if default is not None}
            unknown = sorted(set(parameters) - set(named))
            missing = [name for name in named if name not in parameters and name not in defaults]
            if unknown or missing:
                raise ValueError(f"{tab} takes {', '.join(named)}; " + "; ".join(
                    f"{what}: {', '.join(names)}" for what, names in (("missing", missing), ("unknown", unknown))
                    if names))
            extra = {"learned": session_learned} if "learned" in experiment.names() else {}
            return experiment.writer(**(defaults | parameters), **extra)

    def reopen(self, tab: str, settings: dict, tabs: gr.Tabs, sub_tabs: dict[str, gr.Tabs]) -> dict:
        """Updates that open `tab` (and its sub-tab) and put `settings` (a link's lists of values, or the values
        of a run in the history) in its inputs; none for an unknown tab (or none given: the page opened without a
        link)."""
        experiment = self.experiments.get(tab)
        if experiment is None:
            if tab:
                gr.Warning(html.escape(f"The link's tab={tab!r} is not one of this page's ("
                                       f"{', '.join(self.experiments)}): the page opens as it starts", quote=False))
            return {tabs: gr.skip()}  # an empty dict would be read as one value for all the outputs
        top, *inner = experiment.place
        updates = {tabs: gr.Tabs(selected=top)} | ({sub_tabs[top]: gr.Tabs(selected=inner[0])} if inner else {})
        for name, component in zip(experiment.names(), experiment.inputs):
            if name in settings and name not in UNLINKED:
                updates[component] = linked_value(component, name, settings[name])
        return updates


def default_of(component):
    """What an endpoint passes for a parameter left out, as gradio does: the input's value on a fresh page (an
    image: its file), none for the session's state or an input that starts empty."""
    value = None if isinstance(component, gr.State) else component.value
    return value.get("path") if isinstance(value, dict) and "path" in value else value


def linked_value(component, name: str, value):
    """A link's (or the history's) value for an input, as the input takes it; a number that is not one, a
    slider's number outside its range, or a choice the input does not offer, is left as it was, with a message.
    A link gives each name's values as a list: checkboxes take them all, any other input the last."""
    if isinstance(value, list) and not isinstance(component, gr.CheckboxGroup):
        value = value[-1]
    if isinstance(component, (gr.Radio, gr.Dropdown, gr.CheckboxGroup)):
        return linked_choice(component, name, value)
    if not isinstance(component, (gr.Number, gr.Slider)):
        return value
    return linked_number(component, name, value)


def linked_number(component: gr.Number | gr.Slider, name: str, value):
    """A link's number, or a message that says why the input keeps its own: not a number, out of the slider's
    range, a fraction where the input counts in whole numbers, or not a seed."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return left_as_it_was(f"The link's {name}={value!r} is not a number", name)
    if isinstance(component, gr.Slider) and not component.minimum <= number <= component.maximum:
        return left_as_it_was(f"The link's {name}={value} is out of range ({component.label} takes "
                              f"{component.minimum:g} to {component.maximum:g})", name)
    counted = name == "seed" or isinstance(component, gr.Slider) and float(component.step).is_integer()
    if counted and not number.is_integer():
        return left_as_it_was(f"The link's {name}={value} is not a whole number", name)
    if name == "seed" and not (number == RANDOM_SEED or 0 <= number <= MAX_SEED):
        return left_as_it_was(f"The link's seed={value} is not a seed ({RANDOM_SEED}: a random one, or 0 to "
                              f"{MAX_SEED})", name)
    return number


def linked_choice(component, name: str, value):
    """A link's choice (checkboxes: choices), as the input offers it: a link carries 8 as "8"."""
    values = choice_values(component)
    if values is None:
        return value
    offered = {str(choice): choice for choice in values}
    given = value if isinstance(value, list) else [value]
    unknown = [item for item in given if str(item) not in offered]
    if unknown:
        return left_as_it_was(f"The link's {name}={unknown[0]!r} is not a choice ({component.label} takes one of "
                              f"{', '.join(offered)})", name)
    chosen = [offered[str(item)] for item in given]
    return chosen if isinstance(component, gr.CheckboxGroup) else chosen[0]


def left_as_it_was(why: str, name: str):
    """A message that a link's value is not used (a toast is HTML: the value is shown as written)."""
    gr.Warning(html.escape(f"{why}: {name} is left as it was", quote=False))
    return gr.skip()
