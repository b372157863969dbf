"""The page on the toy model in a real headless Chromium, as README shows it: each test drives a tab the way a
user would, checks what the page shows, and takes README's picture of it.

    SDLENS_PICTURES=ui/assets .venv/bin/python -m pytest tests/test_pictures.py   # refresh README's pictures

Without SDLENS_PICTURES the pictures land in tests/screenshots/pictures/, to be looked at.
"""
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ROOT, free_port, start_app
from tests.test_browser import ARGS, CHROMIUM, RUN_TIMEOUT_MS, SHOTS, set_number

PICTURES = ROOT / os.environ["SDLENS_PICTURES"] if os.environ.get("SDLENS_PICTURES") else SHOTS / "pictures"
WIDTHS = (1280, 1920)  # the page is checked at both


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)")
    PICTURES.mkdir(parents=True, exist_ok=True)
    proc, url, _ = start_app("--model", "toy", "--port", str(free_port()))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": WIDTHS[0], "height": 1000})
            page.goto(url)
            yield page
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def picture(page, name: str) -> None:
    page.screenshot(path=PICTURES / name, full_page=True)


def test_text_to_image_then_send_the_result_to_image_to_image(page):
    page.get_by_role("button", name="Generate").first.click()
    status = page.locator("#txt2img-status")
    expect(status).to_contain_text("step 30 / 30", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("done")
    page.get_by_role("button", name="Make the x0 video").click()
    expect(page.locator("#txt2img-result img")).to_have_count(1)
    expect(page.locator("#txt2img-video-gif img")).to_have_attribute(
        "src", re.compile(r"sdlens-txt2img-x0-seed32\.gif$"), timeout=RUN_TIMEOUT_MS)
    picture(page, "txt2img.png")
    tab = page.locator("#tab-txt2img")
    tab.get_by_label("Prompt", exact=True).fill("a green circle on a white background")
    tab.get_by_label("Seed", exact=True).fill("7")
    page.locator("#txt2img-send-img2img").click()
    img2img = page.locator("#tab-img2img")
    expect(img2img).to_be_visible()
    expect(img2img.get_by_label("Prompt", exact=True)).to_have_value("a green circle on a white background")
    expect(img2img.get_by_label("Seed", exact=True)).to_have_value("32")  # the seed the result was made with
    expect(page.locator("#img2img-input img")).to_have_count(1)


def test_image_to_image_streams_from_the_sent_image_and_clears_stale_panels(page):
    tab = page.locator("#tab-img2img")
    set_number(tab, "Strength", 0.8)  # README's picture: the start at 0.8, where the circle turns green (0.6: brown)
    tab.get_by_role("button", name="Generate").click()
    status = page.locator("#img2img-status")
    expect(status).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    for panel in ("#img2img-fitted", "#img2img-start", "#img2img-xt", "#img2img-x0", "#img2img-result"):
        expect(page.locator(f"{panel} img")).to_have_count(1)
    picture(page, "img2img.png")
    set_number(tab, "Strength", 0)
    tab.get_by_role("button", name="Generate").click()
    expect(page.locator("#img2img-about")).to_contain_text("no step runs", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#img2img-about")).not_to_contain_text("predicted x0")  # no noised start to speak of
    expect(status).to_contain_text("no step run · done")
    for panel in ("#img2img-xt", "#img2img-x0"):  # the last run's frames are gone
        expect(page.locator(f"{panel} img")).to_have_count(0)
    expect(page.locator("#img2img-result img")).to_have_count(1)


def test_token_swap(page):
    page.get_by_role("tab", name="Text", exact=True).click()
    page.get_by_role("tab", name="Swap a token").click()
    tab = page.locator("#text-swap")
    tab.get_by_role("button", name="Generate both").click()
    expect(page.locator("#swap-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#swap-status")).to_contain_text("token 2 → 'blue'")
    picture(page, "text-swap.png")


def test_the_tokens_table_and_gallery_captions_fit_at_both_widths(page):
    page.get_by_role("tab", name="Tokens and embeddings").click()
    page.get_by_role("button", name="Show the tokens").click()
    table = page.locator("#tokens-table")
    expect(table).to_contain_text("position embedding", timeout=RUN_TIMEOUT_MS)
    page.get_by_role("tab", name="VAE", exact=True).click()
    page.get_by_role("button", name="Encode and decode").click()
    expect(page.locator("#vae-channels img")).to_have_count(4, timeout=RUN_TIMEOUT_MS)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 1000})
        for caption in page.locator("#vae-channels .caption-label").all():
            thumbnail = caption.locator("xpath=../img").bounding_box()
            assert caption.bounding_box()["y"] >= thumbnail["y"] + thumbnail["height"] - 1  # under, not over
        page.get_by_role("tab", name="Text", exact=True).click()
        last = table.locator("th").last.bounding_box()
        box = table.bounding_box()
        assert last["x"] + last["width"] <= box["x"] + box["width"] + 1  # the last column is not cut off
        page.get_by_role("tab", name="VAE", exact=True).click()
    page.set_viewport_size({"width": WIDTHS[0], "height": 1000})


def test_blue_loss_guidance(page):
    page.get_by_role("tab", name="Guidance", exact=True).click()
    tab = page.locator("#tab-guided")
    tab.get_by_role("button", name="Generate").click()
    expect(page.locator("#guided-beside img")).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#guided-status")).to_contain_text("step 50 / 50")  # the notebook's guidance demo's steps
    expect(page.locator("#guided-status")).to_contain_text("done")
    expect(page.locator("#guided-plot canvas, #guided-plot svg").first).to_be_visible()
    picture(page, "guided.png")


def test_samplers_compared_side_by_side(page):
    page.get_by_role("tab", name="Inside a step", exact=True).click()
    page.get_by_role("tab", name="Samplers", exact=True).click()
    tab = page.locator("#compare-samplers")
    tab.get_by_role("button", name="Compare").click()
    expect(page.locator("#samplers-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#samplers-strip img")).to_have_count(5)
    for name in ("lms", "euler", "ddim", "dpm++", "optim"):
        expect(page.locator("#samplers-strip")).to_contain_text(name)
    expect(page.locator("#samplers-movement canvas, #samplers-movement svg").first).to_be_visible()
    picture(page, "compare-samplers.png")


def test_the_code_of_the_first_run(page):
    """README's "Show the code": the text-to-image run above as a script."""
    page.get_by_role("tab", name="Text to image").click()
    box = page.locator("#txt2img-code-box")
    box.get_by_text("Show the code").click()
    expect(page.locator("#txt2img-code")).to_contain_text("seed = 32")
    box.screenshot(path=PICTURES / "code.png")
