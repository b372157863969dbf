"""A history entry's caption says what the run was: its kind, the text lab's edit, its seed, then its prompts."""
import pytest

from ui.code_panel import History

PROMPT = "a red circle on a white background"


@pytest.mark.parametrize("tab, settings, caption", [
    ("txt2img", {"prompt": PROMPT, "seed": 32}, f"text to image · seed 32: {PROMPT}"),
    ("swap_token", {"prompt": PROMPT, "token": "red", "replacement": "blue", "seed": 32},
     f"token swap · red → blue · seed 32: {PROMPT}"),
    ("swap_token", {"prompt": PROMPT, "token": "2", "replacement": "blue", "seed": 32},
     f"token swap · token 2 → blue · seed 32: {PROMPT}"),  # picked from the menu: its position, as the status
    ("mix_tokens", {"prompt": PROMPT, "token": "red", "word_a": "blue", "word_b": "yellow", "weight": 0.7, "seed": 1},
     f"token mix · red → 0.7 blue + 0.3 yellow · seed 1: {PROMPT}"),
    ("textual_inversion", {"prompt": "a green star", "token": "green", "learned_token": "<teal>", "seed": 32},
     "textual inversion · green → <teal> · seed 32: a green star"),
    ("textual_inversion", {"prompt": "a <teal> star", "token": "", "learned_token": "<teal>", "seed": 32},
     "textual inversion · seed 32: a <teal> star"),  # the token written in the prompt
    ("mix_prompts", {"prompt_a": PROMPT, "prompt_b": "a blue star", "factor": "0.25", "seed": 32},
     f"prompt mix · 0.25 A + 0.75 B · seed 32: {PROMPT} + a blue star"),  # a script's factor, as text
    ("cfg_sweep", {"prompt": PROMPT, "entries": "1, 4", "seed": 32}, f"scales · 1, 4: {PROMPT}"),
])
def test_a_caption_names_the_run_and_its_edit(tab, settings, caption):
    assert History.caption(tab, settings) == caption


def test_a_long_prompt_is_cut_in_the_caption_after_the_edit():
    caption = History.caption("swap_token", {"prompt": "a red circle " * 20, "token": "red", "replacement": "blue",
                                             "seed": 5})
    assert caption.startswith("token swap · red → blue · seed 5: a red circle") and caption.endswith("…")
    assert len(caption.split(": ", 1)[1]) == 80
