"""Show the code and links: each generating tab's last run as a self-contained script (core.code) and as a
link that reopens the tab with the run's settings; `/code` writes the script of any tab's run from that tab's
own named parameters."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import gradio as gr

from ui.common import user_errors

LABEL = "This run as a script (diffusers, transformers and torch only): python script.py OUT.png"
IDLE = "# The script of this tab's run appears here when a run ends."
UNLINKED = ("learned", "image")  # session state and uploads: a link cannot carry them
# The query string the server writes, made a whole link in the browser (the page knows its own address,
# a gradio.live one included).
FULL_LINK = "(query) => query ? window.location.origin + window.location.pathname + query : ''"

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
            self.code = gr.Code(IDLE, language="python", label=LABEL, interactive=False, max_lines=40,
                                buttons=["copy", "download"], elem_id=f"{elem}-code")

    def after(self, run: gr.events.Dependency, writer: Writer, inputs: list, progress: gr.JSON) -> None:
        """Once `run` succeeds, its script and its link: `writer` of the run's `inputs`, with the seed the run
        reported (a random seed is drawn by the run)."""
        self.writers.experiments[self.tab] = Experiment(writer, inputs, self.place)
        tab = self.tab

        def show(*values):
            *given, reported = values
            arguments = inspect.signature(writer).bind(*given).arguments
            if reported and reported.get("seed") is not None:
                arguments["seed"] = reported["seed"]
            with user_errors():
                script = writer(**arguments)
            linked = {name: value for name, value in arguments.items() if name not in UNLINKED}
            return script, "?" + urlencode({"tab": tab, **linked})

        run.success(show, [*inputs, progress], [self.code, self.link], api_visibility="private", queue=False).then(
            None, self.link, self.link, js=FULL_LINK)


class Writers:
    """Every tab that writes its runs as code, by the name of its endpoint: served as `/code`, and reopened
    from a link."""

    def __init__(self):
        self.experiments: dict[str, Experiment] = {}

    def wire(self, demo: gr.Blocks, learned: gr.State, tabs: gr.Tabs, sub_tabs: dict[str, gr.Tabs]) -> None:
        """`/code`, and the page load that applies a link; `learned` is the session's learned embeddings (for
        the tabs that take them), `tabs` the page's tabs and `sub_tabs` the tabs inside some of them, by id."""
        with gr.Row(visible=False):
            tab, parameters, script = gr.Textbox(), gr.JSON(), gr.Code(language="python")
        gr.Button(visible=False).click(self.code, [tab, parameters, learned], script, api_name="code", queue=False)
        shown = list({id(c): c for e in self.experiments.values() for c in e.inputs if not isinstance(c, gr.State)}
                     .values())
        demo.load(self.opener(tabs, sub_tabs), None, [tabs, *sub_tabs.values(), *shown], api_visibility="private",
                  queue=False)

    def code(self, tab: str, parameters: dict, session_learned: dict):
        """The script of a run of `tab` (an endpoint's name, e.g. txt2img) with `parameters` (every one of that
        endpoint's named parameters, as a JSON object)."""
        with user_errors():
            if tab not in self.experiments:
                raise ValueError(f"tab must be one of {', '.join(self.experiments)}, got {tab!r}")
            writer = self.experiments[tab].writer
            if not isinstance(parameters, dict):
                raise ValueError(f"parameters must be a JSON object of {tab}'s named parameters, got {parameters!r}")
            named = [name for name in self.experiments[tab].names() if name != "learned"]
            unknown = sorted(set(parameters) - set(named))
            missing = [name for name in named if name not in parameters]
            if unknown or missing:
                raise ValueError(f"{tab} takes {', '.join(named)}; " + "; ".join(
                    f"{what}: {', '.join(names)}" for what, names in (("missing", missing), ("unknown", unknown))
                    if names))
            extra = {"learned": session_learned} if "learned" in self.experiments[tab].names() else {}
            return writer(**parameters, **extra)

    def opener(self, tabs: gr.Tabs, sub_tabs: dict[str, gr.Tabs]):
        """The page-load handler: a link's tab opened, and its settings put in that tab's inputs."""

        def open_link(request: gr.Request) -> dict:
            query = dict(request.query_params)
            experiment = self.experiments.get(query.get("tab", ""))
            if experiment is None:
                return {}
            top, *inner = experiment.place
            updates = {tabs: gr.Tabs(selected=top)} | ({sub_tabs[top]: gr.Tabs(selected=inner[0])} if inner else {})
            for name, component in zip(experiment.names(), experiment.inputs):
                if name in query and name not in UNLINKED:
                    updates[component] = linked_value(component, name, query[name])
            return updates

        return open_link


def linked_value(component, name: str, text: str):
    """A link's value for an input, as the input takes it; a number that is not one is left as it was."""
    if not isinstance(component, (gr.Number, gr.Slider)):
        return text
    try:
        return float(text)
    except ValueError:
        gr.Warning(f"The link's {name}={text!r} is not a number: {name} is left as it was")
        return gr.skip()
