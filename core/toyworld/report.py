"""A toy model's measured quality in one report: each tab at its page defaults and with one control moved at a
time, the VAE's round trip, and the time an image takes. The model card's table and the page's notes quote it.

    python -m core.toyworld.report --model core/toyworld/model > report.md   # every row: about an hour on 2 cores
    python -m core.toyworld.report --model DIR --only vae txt2img            # some of the groups
    python -m core.toyworld.report --model DIR --only guided --blue-scales 30 40 60   # and the loss at these scales

Each row is measured by core.toyworld.evaluate (its grids, seeds and reading) and printed as soon as it is done,
so a stopped run keeps what it measured. A row names what it changed from the tab's defaults, which head each
group's table.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.toyworld.data import make_dataset, off_palette_images
from core.toyworld.evaluate import evaluate, evaluate_blue, evaluate_img2img

GROUPS = ("vae", "txt2img", "guided", "img2img")
TAB = {"txt2img": None, "guided": "guided", "img2img": "img2img"}  # the page's tab whose defaults a group starts from
OFF_PALETTE = (300, 7)  # scenes in unnamed colours for the VAE's round trip, and their seed


@dataclass(frozen=True)
class Row:
    group: str                                     # one of GROUPS
    label: str                                     # what the row changes from the tab's defaults
    settings: dict = field(default_factory=dict)   # core.sampler.Settings fields changed
    guidance: dict = field(default_factory=dict)   # core.guidance.Guidance fields changed (the guided group)
    scale_factor: float = 1.0                      # the loss scale, times the page's (the guided group)
    seeds: int = 2


ROWS = (
    Row("vae", "round trip, PSNR: the recipe's held-out scenes / scenes in unnamed colours"),
    Row("txt2img", "page defaults"),
    Row("txt2img", "CFG 3", {"guidance_scale": 3.0}),
    Row("txt2img", "Euler", {"scheduler": "euler"}),
    *(Row("txt2img", f"CFG {cfg}", {"guidance_scale": float(cfg)}, seeds=1) for cfg in (10, 12, 15)),
    Row("txt2img", "Euler, CFG 15", {"scheduler": "euler", "guidance_scale": 15.0}, seeds=1),
    *(Row("txt2img", f"{name}, 15 steps", {"scheduler": key, "steps": 15}, seeds=1)
      for name, key in (("LMS", "lms"), ("Euler", "euler"), ("DDIM", "ddim"), ("DPM++", "dpm++"))),
    Row("txt2img", "LMS, 20 steps", {"steps": 20}, seeds=1),
    Row("guided", "page defaults"),
    Row("guided", "half the loss scale", scale_factor=0.5),
    Row("guided", "twice the loss scale", scale_factor=2.0),
    Row("guided", "five times the loss scale (too high: plain blue)", scale_factor=5.0),
    Row("guided", "Euler", {"scheduler": "euler"}),
    Row("guided", "CFG 3", {"guidance_scale": 3.0}),
    Row("guided", "30 steps, CFG 7.5", {"steps": 30, "guidance_scale": 7.5}),
    Row("guided", "the accurate gradient", guidance={"mode": "accurate"}),
    Row("img2img", "page defaults"),
    Row("img2img", "Euler", {"scheduler": "euler"}),
    Row("img2img", "CFG 3", {"guidance_scale": 3.0}),
    *(Row("img2img", f"{steps} steps", {"steps": steps}) for steps in (30, 15)),
)
HEADS = {
    "vae": "| VAE | dB |",
    "txt2img": "| text to image | colour / shape / background | s an image |",
    "guided": "| blue loss | bluer by 0.15 / shape read right (unguided) | median rise |",
    "img2img": "| image to image | layout kept at 0.2 / 0.3 / 0.4 | new colour at 0.2 / 0.3 / 0.4 / 0.6 |",
}


def percent(*shares: float) -> str:
    return " / ".join(f"{100 * share:.0f}" for share in shares) + "%"


def vae_cells(bundle, folder: Path) -> list[str]:
    """The VAE's round trip over the recipe's held-out scenes (regenerated from training.json) and over scenes in
    unnamed colours: mean PSNR in dB."""
    from core.toyworld.train import held_out_psnr, to_tensor  # torch and diffusers' training side, only here
    recipe = json.loads((folder / "training.json").read_text())["recipe"]
    data = make_dataset(recipe["images"] + recipe["held_out"], seed=recipe["seed"],
                        shade_spread=recipe["shade_spread"], free_colour=recipe["free_colour"])
    held_out = to_tensor([image for image, _, _ in data[recipe["images"]:]])
    unnamed = to_tensor(off_palette_images(*OFF_PALETTE))
    return [" / ".join(f"{held_out_psnr(bundle.vae, images):.2f}" for images in (held_out, unnamed))]


def applied(row: Row, settings, guidance) -> tuple:
    """The settings and guidance `row` runs with: the tab's defaults, `settings` and `guidance`, as it changes them."""
    return (replace(settings, **row.settings),
            replace(guidance, **{"scale": guidance.scale * row.scale_factor, **row.guidance}))


def measure(engine, row: Row, settings, guidance) -> list[str]:
    """The cells of `row`, measured with `settings` and, for the guided group, `guidance`, as `applied` gives."""
    if row.group == "txt2img":
        result = evaluate(engine, settings, row.seeds)
        return [percent(result["color"], result["shape"], result["background"]), f"{result['seconds_per_image']:.2f}"]
    if row.group == "guided":
        result = evaluate_blue(engine, settings, guidance, row.seeds)
        return [f"{percent(result['bluer'], result['shape'])} ({percent(result['shape_unguided'])})",
                f"{result['median_rise']:.2f}"]
    result = evaluate_img2img(engine, settings)
    return [percent(*(result[s]["layout"] for s in ("0.2", "0.3", "0.4"))),
            percent(*(result[s]["new_colour"] for s in ("0.2", "0.3", "0.4", "0.6")))]


def describe(row: Row, settings, guidance) -> str:
    """The row's label with the values it ran at (`applied`'s), e.g. "CFG 3 (LMS, 30 steps, CFG 3, 2 seeds)"."""
    ran = f"{settings.scheduler.upper()}, {settings.steps} steps, CFG {settings.guidance_scale:g}"
    if row.group == "guided":
        ran += f", scale {guidance.scale:g}, from step {guidance.start}, {guidance.mode} gradient"
    return f"{row.label} ({ran}, {row.seeds} seed{'s' * (row.seeds > 1)})"


def report(engine, folder: Path, rows=ROWS, out=sys.stdout) -> None:
    """Measure `rows` on `engine`'s model (from `folder`), writing a markdown table a group as each row is done."""
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            out.write(f"\n{HEADS[group]}\n|{' --- |' * (HEADS[group].count('|') - 1)}\n")
        if group == "vae":
            label, cells = row.label, vae_cells(engine.bundle, folder)
        else:
            settings, guidance = applied(row, engine.default_settings(TAB[group]), engine.default_guidance())
            label, cells = describe(row, settings, guidance), measure(engine, row, settings, guidance)
        out.write(f"| {label} | {' | '.join(cells)} |\n")
        out.flush()


def chosen_rows(only: list[str] | None, blue_scales: list[float]) -> list[Row]:
    """ROWS of the groups in `only` (all if None), with a guided row for each loss scale in `blue_scales`."""
    extra = [Row("guided", f"loss scale {scale:g}", guidance={"scale": scale}) for scale in blue_scales]
    rows = list(ROWS)
    last_guided = max(i for i, row in enumerate(rows) if row.group == "guided")
    rows[last_guided + 1:last_guided + 1] = extra
    return [row for row in rows if only is None or row.group in only]


def main(argv: list[str] | None = None) -> None:
    from core.engine import Engine
    from core.models import load_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a toy model's diffusers folder, with its training.json")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="measure these groups only")
    parser.add_argument("--blue-scales", nargs="+", type=float, default=[], metavar="SCALE",
                        help="also measure the blue loss at these scales (the page's defaults otherwise)")
    args = parser.parse_args(argv)
    engine = Engine(load_bundle(args.model, device="cpu", dtype="float32"))
    report(engine, Path(args.model), chosen_rows(args.only, args.blue_scales))


if __name__ == "__main__":
    main()
