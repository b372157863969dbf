"""The toy model's report: each row runs at the settings it names and prints what was measured."""
import io
from dataclasses import fields

import pytest

from core.guidance import Guidance
from core.sampler import Settings
from core.toyworld import report as report_module
from core.toyworld.report import ROWS, Row, chosen_rows, report


class StandInEngine:
    """The tabs' defaults of the notebook's demos (text to image 30 steps at 7.5, the others 50 at 8) and a loss
    scale of 40; no model, since the measurements are stood in for."""

    def default_settings(self, tab=None):
        return Settings(steps=50, guidance_scale=8.0) if tab else Settings(steps=30, guidance_scale=7.5)

    def default_guidance(self):
        return Guidance(scale=40.0, start=5)


@pytest.fixture
def seen(monkeypatch):
    """Each measurement's settings, recorded, with fixed results."""
    calls = []

    def txt2img(engine, settings, seeds):
        calls.append(("txt2img", settings.scheduler, settings.steps, settings.guidance_scale, seeds))
        return {"color": 1.0, "shape": 0.955, "background": 0.5, "seconds_per_image": 0.314}

    def guided(engine, settings, guidance, seeds):
        calls.append(("guided", settings.scheduler, settings.steps, settings.guidance_scale, guidance.scale,
                      guidance.start, guidance.mode))
        return {"bluer": 0.875, "shape": 0.792, "shape_unguided": 0.958, "median_rise": 0.214}

    def img2img(engine, settings):
        calls.append(("img2img", settings.scheduler, settings.steps, settings.guidance_scale))
        measured = (("0.2", 1.0, 0.0), ("0.3", 0.917, 0.25), ("0.4", 0.75, 0.5), ("0.6", 0.0, 1.0))
        return {s: {"layout": layout, "new_colour": colour} for s, layout, colour in measured}

    monkeypatch.setattr(report_module, "evaluate", txt2img)
    monkeypatch.setattr(report_module, "evaluate_blue", guided)
    monkeypatch.setattr(report_module, "evaluate_img2img", img2img)
    return calls


def test_each_row_runs_at_the_settings_it_names_and_prints_what_was_measured(seen):
    rows = [Row("txt2img", "page defaults"), Row("txt2img", "Euler, CFG 15", {"scheduler": "euler",
                                                                              "guidance_scale": 15.0}, seeds=1),
            Row("guided", "twice the loss scale", scale_factor=2.0),
            Row("guided", "the accurate gradient", guidance={"mode": "accurate"}),
            Row("img2img", "15 steps", {"steps": 15})]
    out = io.StringIO()
    report(StandInEngine(), None, rows, out)
    assert seen == [("txt2img", "lms", 30, 7.5, 2), ("txt2img", "euler", 30, 15.0, 1),
                    ("guided", "lms", 50, 8.0, 80.0, 5, "cheap"), ("guided", "lms", 50, 8.0, 40.0, 5, "accurate"),
                    ("img2img", "lms", 15, 8.0)]
    lines = out.getvalue().splitlines()
    assert lines[1:4] == ["| text to image | colour / shape / background | s an image |", "| --- | --- | --- |",
                          "| page defaults (LMS, 30 steps, CFG 7.5, 2 seeds) | 100 / 96 / 50% | 0.31 |"]
    assert lines[4] == "| Euler, CFG 15 (EULER, 30 steps, CFG 15, 1 seed) | 100 / 96 / 50% | 0.31 |"
    assert lines[8] == ("| twice the loss scale (LMS, 50 steps, CFG 8, scale 80, from step 5, cheap gradient, 2 seeds) "
                        "| 88 / 79% (96%) | 0.21 |")
    assert "scale 40, from step 5, accurate gradient" in lines[9]
    assert lines[-1] == "| 15 steps (LMS, 15 steps, CFG 8, 2 seeds) | 100 / 92 / 75% | 0 / 25 / 50 / 100% |"


def test_the_chosen_groups_keep_their_order_and_take_the_asked_loss_scales():
    rows = chosen_rows(["guided", "img2img"], [30.0, 60.0])
    assert {row.group for row in rows} == {"guided", "img2img"}
    guided = [row for row in rows if row.group == "guided"]
    assert guided[:-2] == [row for row in ROWS if row.group == "guided"]
    assert [(row.label, row.guidance) for row in guided[-2:]] == [("loss scale 30", {"scale": 30.0}),
                                                                    ("loss scale 60", {"scale": 60.0})]
    assert rows[len(guided)].group == "img2img"
    assert chosen_rows(None, []) == list(ROWS)


def test_every_row_changes_only_fields_the_settings_and_the_guidance_have_under_its_own_label():
    for row in ROWS:
        assert set(row.settings) <= {f.name for f in fields(Settings)}, row
        assert set(row.guidance) <= {f.name for f in fields(Guidance)}, row
    assert len({(row.group, row.label) for row in ROWS}) == len(ROWS)
