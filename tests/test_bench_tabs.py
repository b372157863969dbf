"""`python -m bench.tabs`, the device check of each tab's engine calls, on the tiny model on this CPU."""
from __future__ import annotations

from bench import tabs
from core.engine import Engine

TABS = tuple(tabs.CHECKS)


def rows(printed: str) -> dict[str, str]:
    """Each tab's row of the printed table, by tab."""
    return {tab: line for line in printed.splitlines() for tab in TABS if line[5:].startswith(tab + " ")}


def test_every_tab_meets_its_reference_on_the_tiny_model(capsys):
    assert tabs.main(["--steps", "6"]) == 0
    printed = rows(capsys.readouterr().out)
    assert set(printed) == set(TABS)
    assert all(line.startswith("ok ") for line in printed.values())
    assert "max diff 0.0e+00" in printed["text to image"]  # float32 on a CPU: the very same latents as diffusers


def test_every_tab_meets_its_reference_where_the_vae_downsamples_4x(capsys):
    """Nothing assumes SD's 8x: a model with 16x16 latents at 64 px (a finer toy world's shape) passes every row."""
    assert tabs.SHAPES["tiny-4x"].vae_scale_factor == 4
    assert tabs.main(["--model", "tiny-4x", "--steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "tiny-4x" in printed.splitlines()[0]
    assert all(line.startswith("ok ") for line in rows(printed).values()) and set(rows(printed)) == set(TABS)


def test_a_tab_whose_result_departs_from_its_reference_fails_its_row_and_the_others_still_run(capsys, monkeypatch):
    mix = Engine.mix_prompts
    monkeypatch.setattr(Engine, "mix_prompts",  # mixes at 0.5 whatever factor it is given
                        lambda self, a, b, factor, *args, **kw: mix(self, a, b, 0.5, *args, **kw))
    assert tabs.main(["--steps", "6"]) == 1
    printed = rows(capsys.readouterr().out)
    assert printed["text lab: mix prompts"].startswith("FAIL")
    assert [tab for tab, line in printed.items() if line.startswith("FAIL")] == ["text lab: mix prompts"]
