"""The Attention tab as scripts and people use it: /attention through gradio_client on the tiny model, and the
page on the toy model in a real headless Chromium (screenshots in tests/screenshots/, README's picture with
SDLENS_PICTURES=ui/assets)."""
import html
import re
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from core import attention, export
from core.engine import Engine
from core.sampler import Settings
from tests.conftest import as_the_app_runs, free_port, start_app
from tests.test_browser import ARGS, CHROMIUM, RUN_TIMEOUT_MS, SHOTS, record_images, set_number
from tests.test_pictures import PICTURES

# What /attention returns (gradio_client leaves out the State): RunView's outputs, then the tab's own.
RESULT, PROGRESS, GRID, LARGE, MASS, MAPS = 3, 7, 8, 9, 10, 11
TOKENS = ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>", "padding x72"]  # as the tab names them


def attend(client, **change):
    inputs = dict(prompt="a red circle", negative_prompt="", parts=["down", "mid", "up"], cells=[16], opacity=0.5,
                  token=3, steps=5, guidance_scale=7.5, seed=4, width=64, height=64, preview_every=1,
                  previews="auto", scheduler="lms") | change
    return client.submit(**inputs, api_name="/attention")


def test_attention_streams_every_step_and_ends_with_the_result_and_each_tokens_final_map(app_url, tiny_bundle):
    client = Client(app_url, verbose=False)
    job = attend(client)
    streamed = list(job)
    assert [out[PROGRESS]["step"] for out in streamed] == [1, 2, 3, 4, 5]
    assert all(len(out[GRID]) == len(TOKENS) for out in streamed)  # every token's map at every step
    last = job.result()
    assert Image.open(last[RESULT]).size == (64, 64)
    assert [item["caption"] for item in last[MAPS]] == [f"{i} {token}" for i, token in enumerate(TOKENS)]
    served = [Image.open(item["image"]) for item in last[MAPS]]
    assert {(image.mode, image.size, image.getextrema()) for image in served} == {("L", (64, 64), (0, 255))}
    settings = Settings(steps=5, guidance_scale=7.5, seed=4, height=64, width=64)
    with as_the_app_runs():
        alone = list(Engine(tiny_bundle).attention("a red circle", "", settings).frames)[-1].observed["attention"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(served, alone.images))
    assert [row[0] for row in last[MASS]["data"]] == [f"{i} {token}" for i, token in enumerate(TOKENS)]  # as the grid
    assert sum(row[1] for row in last[MASS]["data"]) == pytest.approx(1.0, abs=1e-5)
    assert last[GRID][3]["caption"].startswith("3 circle · ")
    assert Image.open(last[LARGE]).size == (64, 64)
    mp4, gif = client.predict(token=2, opacity=0.5, fps=4, api_name="/attention_map_video")
    assert mp4.endswith("sdlens-attention-token2-seed4.mp4") and Image.open(gif).n_frames == 5


def test_on_one_scale_the_maps_and_the_video_are_the_engines_redrawn(app_url, tiny_bundle):
    """scale="one": the last message's grayscale maps are the run's own maps on one scale, the same as the engine's
    run alone redrawn, and so is the chosen token's map in the video's last frame."""
    client = Client(app_url, verbose=False)
    last = attend(client, scale="one", token=2).result()
    served = [np.asarray(Image.open(item["image"])) for item in last[MAPS]]
    settings = Settings(steps=5, guidance_scale=7.5, seed=4, height=64, width=64)
    with as_the_app_runs():
        final = list(Engine(tiny_bundle).attention("a red circle", "", settings).frames)[-1]
    alone = final.observed["attention"]
    redrawn = attention.on_one_scale(alone.images, alone.ranges, alone.tokens)
    assert len(served) == len(redrawn) == len(TOKENS)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(served, redrawn))
    assert sum(image.max() == 255 for image in served[1:-2]) == 1  # one word sets the scale
    gif = Image.open(client.predict(token=2, opacity=0.5, scale="one", fps=4, api_name="/attention_map_video")[1])
    gif.seek(gif.n_frames - 1)
    shown, height = np.asarray(gif.convert("RGB"), dtype=int), export.enlarge(final.x0_image).height

    def frame(gray):  # the video's picture row, x0 | the map over x0, without its caption
        return np.asarray(export.video_frame([final.x0_image, attention.overlay(final.x0_image, gray, 0.5)], ""),
                          dtype=int)[:height]
    one, own = np.abs(shown[:height] - frame(redrawn[2])).mean(), np.abs(shown[:height] - frame(alone.images[2])).mean()
    assert one * 3 < own  # the map on one scale, to within the GIF's palette, not the map on its own


@pytest.mark.parametrize("change, message", [
    ({"scale": "log"}, "Map scale takes one of 'own', 'one', got 'log'"),
    ({"token": 6}, "token must be a position from 0 to 5 (this prompt's maps: 0 <|startoftext|>, 1 a, 2 red"),
    ({"cells": [8]}, "Map resolutions summed over takes one of 16, got 8"),
    ({"parts": "up"}, "UNet parts the maps are summed over takes a list of 'down', 'mid', 'up', got 'up'"),
    ({"parts": []}, "UNet parts must be one or more of down, mid, up, got []"),
    ({"opacity": 2}, "Map opacity over x0 takes 0 to 1, got 2"),
])
def test_bad_attention_input_gets_a_clear_error(app_url, change, message):
    job = attend(Client(app_url, verbose=False), **change)
    with pytest.raises(Exception) as refused:
        job.result()
    assert message in html.unescape(str(refused.value))  # the engine's messages are escaped: the page shows HTML


def test_map_video_before_any_run_says_what_to_do(app_url):
    with pytest.raises(Exception, match="There is no run to make a video of yet: press Generate first"):
        Client(app_url, verbose=False).predict(token=1, opacity=0.5, fps=8, api_name="/attention_map_video")


@pytest.fixture(scope="module")
def toy_page():
    """The Attention tab of the app on the toy model, as README shows it."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)")
    PICTURES.mkdir(parents=True, exist_ok=True)
    SHOTS.mkdir(exist_ok=True)
    proc, url, _ = start_app("--model", "toy", "--port", str(free_port()))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Attention").click()
            yield page
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_green_heart(page, tab, steps: int):
    """Generate "a green heart on a black background" at seed 2 with the heart's map shown large; wait for it."""
    tab.get_by_label("Prompt", exact=True).fill("a green heart on a black background")
    tab.get_by_label("Seed", exact=True).fill("2")
    set_number(tab, "Steps", steps)
    tab.get_by_label("Token shown large", exact=True).fill("3")
    tab.get_by_role("button", name="Generate").click()
    status = page.locator("#attention-status")
    expect(status).to_contain_text(f"step {steps} / {steps}", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("done")
    return status


def test_the_page_streams_each_tokens_map_and_the_scrubber_moves_them(toy_page):
    page, tab = toy_page, toy_page.locator("#tab-attention")
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value("a red circle on a white background")
    expect(tab.get_by_label("Token shown large", exact=True)).to_have_value("2")  # red: the first word past "a"
    page.evaluate(record_images("#attention-beside"))
    status = run_green_heart(page, tab, 20)
    assert len(set(page.evaluate("window.shown"))) >= 15  # 20 streamed; a few may arrive together
    grid = page.locator("#attention-grid .thumbnail-item")
    expect(grid).to_have_count(10)
    expect(grid.nth(3)).to_contain_text("3 heart · ")
    expect(page.locator("#attention-maps .thumbnail-item")).to_have_count(10)
    expect(page.locator("#attention-maps .caption-label").nth(3)).to_have_text("3 heart")
    expect(page.locator("#attention-mass")).to_contain_text("How this step's attention splits")
    page.screenshot(path=SHOTS / "attention.png", full_page=True)
    page.screenshot(path=PICTURES / "attention.png", full_page=True)

    large = page.locator("#attention-beside img")
    shown = large.get_attribute("src")
    grid.nth(2).click()  # "green": shown large instead
    expect(tab.get_by_label("Token shown large", exact=True)).to_have_value("2")
    expect(large).not_to_have_attribute("src", shown)
    tiles = [gallery.locator("img").nth(0) for gallery in (grid, page.locator("#attention-maps .thumbnail-item"))]
    before = [tile.get_attribute("src") for tile in tiles]
    set_number(tab, "Scrub through the run", 3)
    expect(status).to_contain_text("step 3 / 20")
    expect(status).to_contain_text("scrubbing")
    for tile, src in zip(tiles, before):  # the overlays and the grayscale maps both show step 3
        expect(tile).not_to_have_attribute("src", src)
    page.screenshot(path=SHOTS / "attention-scrub.png", full_page=True)
    tab.get_by_role("button", name="Make the video of the chosen token's map").click()
    expect(page.locator("#attention-map-video-gif img")).to_have_attribute(
        "src", re.compile(r"sdlens-attention-token2-seed2\.gif$"), timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#attention-map-video-gif")).to_be_visible()
    expect(page.locator("#attention-map-video-mp4")).to_be_visible()
    run_green_heart(page, tab, 4)  # a new run: the last run's video goes, until one is made of this run
    expect(page.locator("#attention-map-video-gif")).to_be_hidden()
    expect(page.locator("#attention-map-video-mp4")).to_be_hidden()


def test_on_one_scale_the_background_words_map_goes_dark(toy_page):
    """The choice "one scale for all" redraws the maps against the most any word takes, so the word that takes
    little (background, about a sixth of the shape word's share on the toy) shows dim where, on its own scale, it
    spans black to white like every other."""
    page, tab = toy_page, toy_page.locator("#tab-attention")
    tab.get_by_label("each map on its own: where each token lands").check()
    run_green_heart(page, tab, 10)
    background = page.locator("#attention-maps img").nth(7)
    expect(page.locator("#attention-maps .caption-label").nth(7)).to_have_text("7 background")
    own = background.get_attribute("src")
    tab.get_by_label("one scale for all: how much each token takes").check()
    expect(background).not_to_have_attribute("src", own)
    page.screenshot(path=SHOTS / "attention-one-scale.png", full_page=True)
    served = background.get_attribute("src").split("file=", 1)[1]  # the app's cache, on this machine
    assert np.asarray(Image.open(served)).max() < 128
