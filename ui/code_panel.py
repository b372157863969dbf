"""Show the code: each generating tab's last run as a self-contained script (core.code), and `/code`, which
writes the script of any tab's run from that tab's own named parameters."""
from __future__ import annotations

import inspect
from collections.abc import Callable

import gradio as gr

from ui.common import user_errors

LABEL = "This run as a script (diffusers, transformers and torch only): python script.py OUT.png"
IDLE = "# The script of this tab's run appears here when a run ends."

Writer = Callable[..., str]  # a tab's named parameters (those of its endpoint) -> the script of that run


class CodePanel:
    """The script of the tab's last run, highlighted, with Copy and Download (.py) buttons."""

    def __init__(self, name: str):
        with gr.Accordion("Show the code", open=False, elem_id=f"{name}-code-box"):
            self.code = gr.Code(IDLE, language="python", label=LABEL, interactive=False, max_lines=40,
                                buttons=["copy", "download"], elem_id=f"{name}-code")

    def after(self, run: gr.events.Dependency, writer: Writer, inputs: list, progress: gr.JSON) -> None:
        """Once `run` succeeds, its script: `writer` of the run's `inputs`, with the seed the run reported (a
        random seed is drawn by the run)."""

        def show(*values):
            *given, reported = values
            arguments = inspect.signature(writer).bind(*given).arguments
            if reported and reported.get("seed") is not None:
                arguments["seed"] = reported["seed"]
            with user_errors():
                return writer(**arguments)

        run.success(show, [*inputs, progress], self.code, api_visibility="private", queue=False)


class Writers:
    """Every tab's writer, by the name of the tab's endpoint; served as `/code`."""

    def __init__(self):
        self.writers: dict[str, Writer] = {}

    def add(self, tab: str) -> Callable[[Writer], Writer]:
        """A decorator: the writer of `tab`'s runs."""
        def register(writer: Writer) -> Writer:
            self.writers[tab] = writer
            return writer
        return register

    def wire(self, learned: gr.State) -> None:
        """`/code`: a hidden endpoint for scripts (tab, parameters) -> the script; `learned` is the session's
        learned embeddings, for the tabs that take them."""

        def code(tab: str, parameters: dict, session_learned: dict):
            """The script of a run of `tab` (an endpoint's name, e.g. txt2img) with `parameters` (every one of that
            endpoint's named parameters, as a JSON object)."""
            with user_errors():
                if tab not in self.writers:
                    raise ValueError(f"tab must be one of {', '.join(self.writers)}, got {tab!r}")
                writer = self.writers[tab]
                if not isinstance(parameters, dict):
                    raise ValueError(f"parameters must be a JSON object of {tab}'s named parameters, "
                                     f"got {parameters!r}")
                accepted = inspect.signature(writer).parameters
                named = [name for name in accepted if name != "learned"]
                unknown = sorted(set(parameters) - set(named))
                missing = [name for name in named if name not in parameters]
                if unknown or missing:
                    raise ValueError(f"{tab} takes {', '.join(named)}; "
                                     + "; ".join(f"{what}: {', '.join(names)}" for what, names
                                                 in (("missing", missing), ("unknown", unknown)) if names))
                extra = {"learned": session_learned} if "learned" in accepted else {}
                return writer(**parameters, **extra)

        with gr.Row(visible=False):
            tab, parameters, script = gr.Textbox(), gr.JSON(), gr.Code(language="python")
        gr.Button(visible=False).click(code, [tab, parameters, learned], script, api_name="code", queue=False)
