"""Turn the engine's input errors into messages on the page (and in the API's error)."""
from __future__ import annotations

from contextlib import contextmanager

import gradio as gr


@contextmanager
def user_errors():
    try:
        yield
    except ValueError as err:
        raise gr.Error(str(err)) from err
