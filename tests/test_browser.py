"""The page in a real headless Chromium, as a user sees it: streamed frames, Stop, the scrubber.

Screenshots land in tests/screenshots/ to be looked at.
"""
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("SDLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = Path(__file__).resolve().parent / "screenshots"
RUN_TIMEOUT_MS = 120_000
LINK_TIMEOUT_MS = 30_000  # a link's settings arrive after the page loads, in one round trip for every tab's inputs


def record_images(panel: str) -> str:
    """JavaScript that records in window.shown every image the element `panel` (a CSS selector) shows, so that
    frames that flash by are counted too."""
    return """() => {
  window.shown = [];
  const panel = document.querySelector('%s');
  const note = () => panel.querySelectorAll('img').forEach(img => {
    if (img.src && window.shown.at(-1) !== img.src) window.shown.push(img.src);
  });
  new MutationObserver(note).observe(panel, {subtree: true, childList: true, attributes: true,
                                             attributeFilter: ['src']});
}""" % panel


@pytest.fixture(scope="module")
def page(app_url):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(app_url)
        yield page
        browser.close()


def set_number(page, label, value):
    """Type `value` into a slider's number box and press Enter, as a user does once the box shows."""
    fill(page.get_by_label(f"number input for {label}"), str(value), enter=True)


def fill(box, text, enter=False):
    """Type `text` into `box` (then Enter) until the box holds it. A tab's controls mount when the tab is first
    opened (Gradio renders its children then) and take their first value as they mount: a value typed in that
    moment can be replaced by the box's default, so it is typed again, three times at most."""
    for _ in range(3):
        box.fill(text)
        if enter:
            box.press("Enter")
        try:
            expect(box).to_have_value(text, timeout=2000)
            return
        except AssertionError:
            continue
    expect(box).to_have_value(text)


def test_the_page_opens_without_a_link_and_without_errors(page):
    """A plain address applies no link: no input shows the error badge of a failed page load."""
    expect(page.locator("#tab-txt2img").get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.locator("[data-testid=status-tracker]", has_text="Error")).to_have_count(0)
    notebook = page.locator("#model-info a", has_text="Stable Diffusion Deep Dive")  # what "the notebook" is
    expect(notebook).to_have_attribute("href", re.compile(r"^https://github\.com/fastai/diffusion-nbs/"))


RUN_BUTTONS = [("Text to image", None, "#tab-txt2img", "Generate"), ("Guidance", None, "#tab-guided", "Generate"),
               ("Image to image", None, "#tab-img2img", "Generate"), ("Attention", None, "#tab-attention", "Generate"),
               ("Text", "Swap a token", "#text-swap", "Generate both"),
               ("Inside a step", "Guidance taken apart", "#compare-parts", "Generate"),
               ("Inside a step", "Scales", "#compare-scales", "Compare"),
               ("Inside a step", "Samplers", "#compare-samplers", "Compare"),
               ("Inside a step", "Seeds", "#compare-seeds", "Compare")]


def test_every_run_button_shows_on_a_projectors_first_screen(page, app_url):
    """At 1280 x 720, each tab's run button ends within the page's first 720 lines: no scrolling to run."""
    projected = page.context.browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        projected.goto(app_url)
        for top, sub, scope, name in RUN_BUTTONS:
            projected.get_by_role("tab", name=top, exact=True).click()
            if sub:
                projected.get_by_role("tab", name=sub, exact=True).click()
            button = projected.locator(scope).get_by_role("button", name=name, exact=True)
            expect(button).to_be_visible()
            bottom = button.evaluate("e => e.getBoundingClientRect().bottom + window.scrollY")
            assert bottom <= 720, (top, sub, bottom)
    finally:
        projected.close()


def test_generate_streams_distinct_frames(page):
    status = page.locator("#txt2img-status")
    page.get_by_label("Prompt", exact=True).fill("a red circle on a white background")
    set_number(page, "Steps", 20)
    page.evaluate(record_images("#txt2img-x0"))
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("step 20 / 20")
    sources = page.evaluate("window.shown")
    assert len(set(sources)) >= 15  # 20 streamed; the page may coalesce a few that arrive together
    expect(page.locator("#txt2img-result img")).to_have_count(1)
    expect(page.get_by_text("Scrub through the run")).to_be_visible()
    page.get_by_role("button", name="Make the x0 video").click()
    # 512 px tall frames with their captions: a few seconds to encode
    expect(page.get_by_text(re.compile(r"sdlens-txt2img-x0-seed\d+.*\.mp4"))).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    # the GIF plays in the page
    expect(page.locator("#txt2img-video-gif img")).to_have_attribute(
        "src", re.compile(r"sdlens-txt2img-x0-seed\d+\.gif$"), timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#txt2img-video-gif")).to_be_visible()
    page.screenshot(path=SHOTS / "txt2img.png", full_page=True)


def test_show_the_code_gives_the_last_runs_script(page):
    """After the run above: its script, with the run's seed and steps, highlighted, with Copy and Download."""
    seed = re.search(r"seed (\d+)", page.locator("#txt2img-status").inner_text()).group(1)
    page.locator("#txt2img-code-box").get_by_text("Show the code").click()
    code = page.locator("#txt2img-code")
    expect(code).to_contain_text(f"seed = {seed}")
    expect(code).to_contain_text("num_inference_steps = 20")
    expect(code).to_contain_text("prompt = 'a red circle on a white background'")
    expect(code.locator(".cm-line span").nth(50)).to_be_attached()  # highlighted: its tokens in styled spans
    expect(code.get_by_label("Copy")).to_be_visible()
    expect(code.get_by_label("Download")).to_be_visible()
    code.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "code.png")
    page.locator("#txt2img-code-box").get_by_text("Show the code").click()


def test_a_link_reopens_the_experiment(page, app_url):
    """The run's link opens the same tab with its settings; a hand-written one opens a text-lab sub-tab."""
    box = page.locator("#txt2img-link textarea")
    expect(box).to_have_value(re.compile(r"^http://.*\?tab=txt2img&"))  # the page makes the query a whole link
    link = box.input_value()
    assert link.startswith(app_url.rstrip("/")) and "tab=txt2img" in link and "steps=20" in link, link
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        other.goto(link.replace("steps=20", "steps=9"))
        txt2img = other.locator("#tab-txt2img")
        expect(txt2img.get_by_label("Prompt", exact=True)).to_have_value("a red circle on a white background",
                                                                          timeout=LINK_TIMEOUT_MS)
        expect(txt2img.get_by_label("number input for Steps")).to_have_value("9")
        other.goto(app_url + "?tab=swap_token&prompt=a+blue+cat&token=blue&replacement=red&seed=5")
        swap = other.locator("#text-swap")
        expect(swap).to_be_visible()
        expect(swap.get_by_label("Prompt", exact=True)).to_have_value("a blue cat", timeout=LINK_TIMEOUT_MS)
        other.get_by_text("Generation settings for every experiment on this tab").click()
        expect(other.locator("#tab-text").get_by_label("Seed", exact=True)).to_have_value("5")
        other.screenshot(path=SHOTS / "link-swap.png")
        other.goto(app_url + "?tab=txt2img&prompt=a+cat&steps=9999&seed=abc&scheduler=heun")  # each bad value says
        expect(other.get_by_text("The link's steps=9999 is out of range (Steps takes 1 to 200): steps is left as it "
                                 "was")).to_be_visible(timeout=LINK_TIMEOUT_MS)  # so, and is left as it was
        expect(other.get_by_text("The link's seed='abc' is not a number: seed is left as it was")).to_be_visible()
        expect(other.get_by_text("The link's scheduler='heun' is not a choice (Sampler takes one of lms, euler, ddim, "
                                 "dpm++, optim): scheduler is left as it was")).to_be_visible()
        txt2img = other.locator("#tab-txt2img")
        expect(txt2img.get_by_label("Prompt", exact=True)).to_have_value("a cat")
        expect(txt2img.get_by_label("number input for Steps")).not_to_have_value("9999")
        other.goto(app_url + "?tab=attention&parts=mid&parts=up")  # checkboxes: a name given once for each
        attention = other.locator("#tab-attention")
        expect(attention.get_by_label("down", exact=True)).not_to_be_checked(timeout=LINK_TIMEOUT_MS)
        expect(attention.get_by_label("mid", exact=True)).to_be_checked()
        expect(attention.get_by_label("up", exact=True)).to_be_checked()
        other.goto(app_url + "?tab=nosuch&steps=12")  # a tab the page does not have: said, not silently dropped
        expect(other.get_by_text("The link's tab='nosuch' is not one of this page's (txt2img, img2img, "
                                 )).to_be_visible(timeout=LINK_TIMEOUT_MS)
    finally:
        other.close()


def test_the_history_reopens_a_run_with_its_settings(page):
    """The session's history holds the run above; clicking it puts the run's settings back."""
    history = page.locator("#history")
    expect(history.locator("img")).to_have_count(1)
    expect(history).to_contain_text(re.compile(r"text to image · seed \d+: a red circle on a white background"))
    tab = page.locator("#tab-txt2img")
    tab.get_by_label("Prompt", exact=True).fill("a green square")
    set_number(page, "Steps", 7)
    history.locator("img").first.click()
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value("a red circle on a white background")
    expect(tab.get_by_label("number input for Steps")).to_have_value("20")
    expect(page.get_by_role("tab", name="Text to image", exact=True)).to_be_in_viewport()  # scrolled up to it
    expect(page.get_by_text(re.compile(r"The settings of “text to image · seed \d+: a red circle on a white "
                                       r"background” are back in its tab: run it again"))).to_be_visible()
    page.locator(".toast-close").click()
    page.mouse.move(0, 0)  # away from the thumbnail: no frame stays on it, to sit on another run once new ones come
    clicked = history.locator(".thumbnail-item").first
    expect(clicked).to_have_class(re.compile(r"\bselected\b"))  # the gallery marks it, and the page draws no frame
    assert clicked.evaluate("e => getComputedStyle(e).getPropertyValue('--ring-color')") == "transparent"
    caption = history.locator(".caption-label").first  # three lines: what the run was, its seed, its prompt's start
    assert caption.evaluate("e => e.clientHeight > 2.5 * parseFloat(getComputedStyle(e).lineHeight)")
    history.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "history.png")


def test_a_run_downloads_as_a_zip_of_its_images_settings_and_code(page, tmp_path):
    box = page.locator("#txt2img-code-box")
    box.get_by_text("Show the code").click()
    with page.expect_download() as download:
        box.locator("#txt2img-zip").click()
    box.get_by_text("Show the code").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert re.fullmatch(r"sdlens-txt2img-seed\d+\.zip", path.name)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        settings = json.loads(archive.read("settings.json"))
        script = archive.read("script.py").decode()
    assert {"settings.json", "script.py", "result.png", "steps/001-x0.png", "steps/020-x_t.png"} <= names
    assert settings["tab"] == "txt2img" and settings["steps"] == 20 and f"seed = {settings['seed']}" in script


def test_scrubber_replays_the_run(page):
    status = page.locator("#txt2img-status")
    x0 = page.locator("#txt2img-x0 img")
    last = x0.get_attribute("src")
    set_number(page, "Scrub through the run", 3)
    expect(status).to_contain_text("step 3 / 20")
    expect(status).to_contain_text("scrubbing")
    assert x0.get_attribute("src") != last
    box = page.get_by_label("number input for Scrub through the run")
    box.fill("99")  # past the end: the last step, as the box then reads, and no message
    box.press("Enter")
    expect(status).to_contain_text("step 20 / 20 · timestep")
    expect(page.get_by_text("Scrub through the run takes")).to_have_count(0)
    page.screenshot(path=SHOTS / "txt2img-scrub.png", full_page=True)


def test_stop_ends_the_run_and_the_page_stays_usable(page):
    status = page.locator("#txt2img-status")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_disabled()  # no run going nor waiting
    set_number(page, "Steps", 200)
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text(re.compile(r"step \d+ / 200"), timeout=RUN_TIMEOUT_MS)
    expect(stop).to_be_enabled()
    # A click event straight away: a trusted click waits for the page to draw the button twice at rest, which
    # a busy headless Chromium may not do before a short run ends.
    stop.dispatch_event("click")
    expect(status).to_contain_text("stopped", timeout=RUN_TIMEOUT_MS)
    stopped_at = int(re.search(r"step (\d+) / 200", status.inner_text()).group(1))
    assert stopped_at < 200
    expect(stop).to_be_disabled()  # greyed out again: nothing runs
    page.screenshot(path=SHOTS / "txt2img-stopped.png", full_page=True)
    set_number(page, "Steps", 3)
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text("step 3 / 3", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("done")


def test_bad_size_shows_an_error_and_the_page_keeps_working(page):
    status = page.locator("#txt2img-status")
    set_number(page, "Width", 68)
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("width must be a multiple of 8 from 64 to 128, got 68")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".toast-body.error")).to_have_css("opacity", "1")  # faded in
    expect(page.locator("#txt2img-x0")).not_to_contain_text("Error")  # the outputs are left alone
    page.screenshot(path=SHOTS / "txt2img-error.png")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()  # the run was refused: nothing to stop
    set_number(page, "Width", 64)
    seed = page.locator("#tab-txt2img").get_by_label("Seed", exact=True)
    kept = seed.input_value()
    seed.fill("1.5")  # refused by name, not rounded to a seed nobody typed
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("seed must be a whole number, got 1.5")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    seed.fill(kept)
    set_number(page, "Steps", 2)
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text("step 2 / 2", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("done")


def queued_behind_a_long_run(page, app_url):
    """A second session's 3-step run, waiting (shown "queue: 1/1") behind a 200-step run of `page`'s; returns
    the second session's page."""
    second = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
    second.goto(app_url)  # loaded before the first run starts, so that it queues while that run is young
    set_number(second, "Steps", 3)
    set_number(page, "Steps", 200)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#txt2img-status")).to_contain_text(re.compile(r"step \d+ / 200"), timeout=RUN_TIMEOUT_MS)
    second.get_by_role("button", name="Generate").click()
    expect(second.locator("#txt2img-x0")).to_contain_text(re.compile(r"queue: 1/1"), timeout=RUN_TIMEOUT_MS)
    return second


def test_a_second_user_sees_their_queue_position_then_gets_served(page, app_url):
    """Two browser sessions, one worker: the second waits in the queue, visibly, until the first run ends.
    (Stop is tested above; here the first page is in the background, where headless Chromium draws too
    seldom for a click to land while the machine is busy with the run.)"""
    first_status = page.locator("#txt2img-status")
    second = queued_behind_a_long_run(page, app_url)
    second.screenshot(path=SHOTS / "txt2img-queued.png")
    expect(first_status).to_contain_text("step 200 / 200", timeout=RUN_TIMEOUT_MS)
    expect(second.locator("#txt2img-status")).to_contain_text("step 3 / 3", timeout=RUN_TIMEOUT_MS)
    expect(second.locator("#txt2img-status")).to_contain_text("done")
    second.close()


def test_stop_pressed_while_queued_ends_that_run_before_its_first_step(page, app_url):
    """A second session presses Stop while its run waits behind the first: the first run goes on to its end,
    and the second ends as it begins, with no step run."""
    first_status = page.locator("#txt2img-status")
    second = queued_behind_a_long_run(page, app_url)
    second.get_by_role("button", name="Stop").dispatch_event("click")  # at once (see the Stop test above)
    second_status = second.locator("#txt2img-status")
    expect(second_status).to_contain_text("no step run · stopped", timeout=RUN_TIMEOUT_MS)
    expect(first_status).to_contain_text("step 200 / 200", timeout=RUN_TIMEOUT_MS)
    expect(first_status).to_contain_text("done")
    second.screenshot(path=SHOTS / "txt2img-stopped-in-queue.png")
    second.close()


def test_upscaling_is_the_users_choice(page):
    set_number(page, "Steps", 2)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#txt2img-status")).to_contain_text("step 2 / 2", timeout=RUN_TIMEOUT_MS)
    x0 = page.locator("#txt2img-x0 img")
    expect(x0).to_have_css("image-rendering", "pixelated")
    page.locator("#upscale").get_by_text("smooth").click()
    expect(x0).to_have_css("image-rendering", "auto")
    page.locator("#upscale").get_by_text("nearest").click()
    expect(x0).to_have_css("image-rendering", "pixelated")


def open_tab(page, name, elem_id):
    page.get_by_role("tab", name=name).click()
    return page.locator(f"#{elem_id}")


def test_img2img_states_the_strength_shows_the_start_and_streams(page):
    tab = open_tab(page, "Image to image", "tab-img2img")
    # the tab starts from the notebook's image-to-image demo: 50 steps at CFG 8
    expect(page.locator("#img2img-plan")).to_contain_text("with 50 steps: skip the first")  # the tab has mounted
    expect(tab.get_by_label("number input for Guidance scale (CFG)")).to_have_value("8")
    set_number(tab, "Strength", 0.5)
    expect(page.locator("#img2img-plan")).to_contain_text("strength 0.5 with 50 steps: skip the first 25 steps")
    set_number(tab, "Steps", 60)
    expect(page.locator("#img2img-plan")).to_contain_text("strength 0.5 with 60 steps: skip the first 30 steps")
    page.evaluate(record_images("#img2img-x0"))
    tab.get_by_role("button", name="Generate").click()
    status = page.locator("#img2img-status")
    expect(status).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("step 60 / 60")
    assert len(set(page.evaluate("window.shown"))) >= 10  # 30 run; a busy page coalesces some (5 of 10 at 10 steps)
    for panel in ("#img2img-fitted", "#img2img-start", "#img2img-result"):
        expect(page.locator(f"{panel} img")).to_have_count(1)
    expect(page.locator("#img2img-about")).to_contain_text("Input: 64x64 RGB, used as it is")
    expect(page.locator("#img2img-about")).to_contain_text("the first step's predicted x0 shows what it sees")
    page.screenshot(path=SHOTS / "img2img.png", full_page=True)


def test_a_strength_out_of_range_is_named_with_its_range(page):
    """A typed 1.5 gets a message naming the slider and its range; the plan follows the next value."""
    tab = open_tab(page, "Image to image", "tab-img2img")
    box = tab.get_by_label("number input for Strength")
    box.fill("1.5")
    box.press("Enter")
    expect(page.get_by_text("Strength takes 0 to 1, got 1.5")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=SHOTS / "img2img-range.png")
    page.locator(".toast-close").click()
    set_number(tab, "Strength", 0.5)
    expect(page.locator("#img2img-plan")).to_contain_text("strength 0.5 with")


def test_an_img2img_example_sets_its_prompt_and_strength_and_clears_the_negative_prompt(page):
    tab = open_tab(page, "Image to image", "tab-img2img")
    fill(tab.get_by_label("Negative prompt", exact=True), "purple")
    tab.locator("tr.tr-body").nth(1).click()  # the notebook's second: a man on a bench at 0.6
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value("An oil painting of a man on a bench")
    expect(tab.get_by_label("Negative prompt", exact=True)).to_have_value("")
    expect(tab.get_by_label("number input for Strength")).to_have_value("0.6")


def test_the_lms_order_choice_shows_under_the_sampler_only_while_it_is_lms(page):
    tab = open_tab(page, "Image to image", "tab-img2img")
    order, sampler = page.locator("#img2img-lms-order"), tab.get_by_label("Sampler")
    expect(order).to_be_visible()
    assert order.bounding_box()["y"] > sampler.bounding_box()["y"]
    for choice, shown in (("euler: one straight step", False), ("lms: the notebook's", True)):
        sampler.click()
        page.get_by_role("option", name=re.compile("^" + re.escape(choice))).click()
        expect(order).to_be_visible() if shown else expect(order).to_be_hidden()


def test_img2img_bad_upload_gets_a_clear_error(page, tmp_path):
    tab = open_tab(page, "Image to image", "tab-img2img")
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    tab.locator("#img2img-input input[type=file]").set_input_files(bad)
    tab.get_by_role("button", name="Generate").click()
    expect(page.get_by_text("holiday.png is not an image that can be read")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".toast-body.error")).to_have_css("opacity", "1")  # faded in
    page.screenshot(path=SHOTS / "img2img-error.png")


def test_vae_tab_shows_channels_reconstruction_and_error(page):
    tab = open_tab(page, "VAE", "tab-vae")
    expect(tab.get_by_label("number input for ... multiplied by")).to_be_disabled()  # until a channel is chosen
    tab.get_by_label("Decode again with channel ...").click()
    page.get_by_role("option", name="1").click()
    tab.get_by_role("button", name="Encode and decode").click()
    about = page.locator("#vae-about")
    expect(about).to_contain_text("64x64x3 -> 8x8x4: 48x fewer numbers", timeout=RUN_TIMEOUT_MS)
    expect(about).to_contain_text(re.compile(r"PSNR \d+\.\d\d dB"))
    expect(page.locator("#vae-channels img")).to_have_count(4)
    for panel in ("#vae-reconstruction", "#vae-difference", "#vae-edited"):
        expect(page.locator(f"{panel} img")).to_have_count(1)
    expect(about).to_contain_text("Bottom right: decoded with channel 1 multiplied by 0")
    expect(tab.get_by_label("number input for ... multiplied by")).to_be_enabled()
    set_number(tab, "... multiplied by", 2)  # decodes again without the button
    expect(about).to_contain_text("Bottom right: decoded with channel 1 multiplied by 2", timeout=RUN_TIMEOUT_MS)
    tab.get_by_label("Decode again with channel ...").click()
    page.get_by_role("option", name="3").click()
    expect(about).to_contain_text("Bottom right: decoded with channel 3 multiplied by 2", timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=SHOTS / "vae.png", full_page=True)
    page.locator("#vae-input").get_by_role("button", name="Remove Image").click()  # a refused run leaves the panels be
    tab.get_by_role("button", name="Encode and decode").click()
    expect(page.get_by_text("There is no image: upload one or pick an example")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(about).to_contain_text("48x fewer numbers")
    for panel in ("#vae-about", "#vae-reconstruction", "#vae-channels"):
        expect(page.locator(panel).get_by_text("Error", exact=True)).to_have_count(0)
    page.locator(".toast-close").click()


def test_schedule_tab_table_plot_and_add_noise(page):
    tab = open_tab(page, "Noise schedule", "tab-schedule")
    set_number(tab, "Steps", 15)
    table = page.locator("#schedule-table")
    expect(table).to_contain_text("9.6826")  # the notebook's second sigma at 15 steps
    expect(table).to_contain_text("input scale")  # scale_model_input's factor: 1/sqrt(sigma²+1) here, 1 for DDIM
    expect(page.locator("#schedule-explain")).to_contain_text("init_noise_sigma = 14.6146")
    set_number(tab, "Step (1 = the noisiest)", 7)
    tab.get_by_role("button", name="Add noise").click()
    expect(page.locator("#noise-about")).to_contain_text("step 7 · timestep", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#noise-row img")).to_have_count(6)
    page.screenshot(path=SHOTS / "schedule.png", full_page=True)
    about = page.locator("#noise-about")
    lms = about.inner_text()
    tab.get_by_label("Sampler").click()  # the noised image follows the schedule: DDIM's step 7 has its own sigma
    page.get_by_role("option", name=re.compile("^ddim")).click()
    expect(about).not_to_have_text(lms, timeout=RUN_TIMEOUT_MS)
    expect(about).to_contain_text("step 7 · timestep")
    step = tab.get_by_label("number input for Step (1 = the noisiest)")
    steps = tab.get_by_label("number input for Steps")
    steps.select_text()  # typed as a person types it, through 2 on the way to 29: the step keeps its place in
    steps.press_sequentially("29", delay=300)  # the schedule all the same, 7 of 15 is 13 of 29
    steps.press("Enter")
    expect(step).to_have_value("13")
    expect(about).to_contain_text("step 13 · timestep", timeout=RUN_TIMEOUT_MS)
    set_number(tab, "Steps", 1)  # one step: the only one to choose, and the step slider greys out
    expect(step).to_be_disabled()
    expect(step).to_have_value("1")
    expect(about).to_contain_text("step 1 · timestep", timeout=RUN_TIMEOUT_MS)


def test_guidance_plots_the_loss_and_shows_the_unguided_run_beside(page):
    tab = open_tab(page, "Guidance", "tab-guided")
    # the tab starts from the notebook's guidance demo (50 steps, CFG 8), the examples' CFG: one block of them
    expect(tab.get_by_label("number input for Steps")).to_have_value("50")
    expect(tab.get_by_label("number input for Guidance scale (CFG)")).to_have_value("8")
    expect(tab.get_by_text(re.compile("^Examples at CFG"))).to_have_count(0)
    example = tab.get_by_text("A campfire (oil on canvas): blue loss x 200", exact=True)
    steps = tab.get_by_label("number input for Steps")
    assert example.bounding_box()["y"] < steps.bounding_box()["y"]  # the demos under the buttons, not the settings
    example.click()
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value("A campfire (oil on canvas)")
    for loss, shown in (("color", "Target color"), ("brightness", "Target level"), ("blue", None)):
        tab.get_by_label("Loss on the decoded x0").click()  # each loss shows the target it reads, and no other
        page.get_by_role("option", name=loss, exact=True).click()
        for target in ("Target color", "Target level"):
            expect(tab.get_by_text(target, exact=True)).to_have_count(1 if target == shown else 0)
    set_number(tab, "Loss scale", 300)
    set_number(tab, "Guide every N steps", 2)
    set_number(tab, "Leave the first N steps unguided", 12)
    set_number(tab, "Steps", 10)  # the unguided steps follow: at most 9 of 10, and 12 comes down to 9
    start = tab.get_by_label("number input for Leave the first N steps unguided")
    expect(start).to_have_attribute("max", "9")
    expect(start).to_have_value("9")
    set_number(tab, "Leave the first N steps unguided", 4)
    tab.get_by_role("button", name="Generate").click()
    expect(page.locator("#guided-beside img")).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#guided-status")).to_contain_text("done")
    expect(page.locator("#guided-result img")).to_have_count(1)
    expect(page.locator("#guided-plot")).to_contain_text("loss on the guided steps")
    expect(page.locator("#guided-plot canvas, #guided-plot svg").first).to_be_visible()
    page.screenshot(path=SHOTS / "guided.png", full_page=True)


def open_text_tab(page, name, elem_id):
    page.get_by_role("tab", name="Text", exact=True).click()
    return open_tab(page, name, elem_id)


def test_tokens_table_and_the_encoder_proof(page):
    tab = open_text_tab(page, "Tokens and embeddings", "text-tokens")
    headers = page.locator("#tokens-table th")
    expect(headers.nth(1)).to_contain_text("token id")  # named before the first press, not numbered 1, 2, 3
    fill(tab.get_by_label("Prompt"), "A picture of a puppy.")
    tab.get_by_role("button", name="Show the tokens").click()
    expect(page.locator("#tokens-proof")).to_contain_text("max abs difference 0", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#tokens-table")).to_contain_text("6829")
    expect(page.locator("#tokens-table")).to_contain_text("69 x <|endoftext|>")
    expect(page.locator("#tokens-heat img")).to_have_count(1)
    expect(page.locator("#tokens-heat")).to_contain_text(re.compile(r"blue < 0 < red, full at ±\d"))  # its scale
    page.screenshot(path=SHOTS / "text-tokens.png", full_page=True)


def test_swap_streams_both_runs_side_by_side(page):
    tab = open_text_tab(page, "Swap a token", "text-swap")
    fill(tab.get_by_label("Prompt"), "a picture of a puppy")
    fill(tab.get_by_label("Put this word there"), "cat")
    fill(tab.get_by_label("The token to replace"), "puppy")
    tab.get_by_label("The token to replace").press("Enter")
    tab.get_by_role("button", name="Generate both").click()
    status = page.locator("#swap-status")
    expect(status).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("token 5 → 'cat'")
    expect(page.locator("#swap-left img")).to_have_count(1)
    expect(page.locator("#swap-right img")).to_have_count(1)
    page.screenshot(path=SHOTS / "text-swap.png", full_page=True)
    tab.get_by_label("Put this word there").fill("stegosaurus")  # refused: the last pair stays, Stop greys out
    tab.get_by_role("button", name="Generate both").click()
    expect(page.get_by_text("'stegosaurus' is")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#swap-left img")).to_have_count(1)
    expect(status).to_contain_text("token 5 → 'cat'")
    expect(tab.get_by_role("button", name="Stop")).to_be_disabled()
    page.locator(".toast-close").click()


def test_mix_tokens(page):
    tab = open_text_tab(page, "Mix two tokens", "text-mix")
    set_number(tab, "Weight of A", 0.4)
    tab.get_by_role("button", name="Generate both").click()
    expect(page.locator("#mix-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#mix-status")).to_contain_text("0.4 x")
    page.screenshot(path=SHOTS / "text-mix.png", full_page=True)


def test_textual_inversion_upload_and_use(page, tmp_path):
    import torch
    torch.save({"<thing>": torch.randn(32)}, tmp_path / "learned_embeds.bin")
    tab = open_text_tab(page, "Textual inversion", "text-ti")
    tab.locator("#ti-upload input[type=file]").set_input_files(tmp_path / "learned_embeds.bin")
    expect(page.locator("#ti-loaded")).to_contain_text("<thing>", timeout=RUN_TIMEOUT_MS)
    tab.get_by_role("button", name="Generate both").click()  # the notebook's way: in place of "puppy"
    expect(page.locator("#ti-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#ti-status")).to_contain_text("token 5 → <thing>")
    page.screenshot(path=SHOTS / "text-ti.png", full_page=True)
    torch.save({"<wide>": torch.randn(768)}, tmp_path / "wide.bin")
    tab.locator("#ti-upload").get_by_role("button", name="Clear").click()
    tab.locator("#ti-upload input[type=file]").set_input_files(tmp_path / "wide.bin")
    expect(page.get_by_text("'<wide>' is 768 wide, but this model's text encoder is 32 wide")).to_be_visible(
        timeout=RUN_TIMEOUT_MS)
    expect(tab.locator("#ti-upload")).not_to_contain_text("wide.bin")  # the refused file leaves the box
    expect(page.locator("#ti-loaded")).to_contain_text("<thing>")
    expect(tab.locator("[data-testid=status-tracker]", has_text="Error")).to_have_count(0)  # no badge left behind


def test_prompt_mix_sweep(page):
    tab = open_text_tab(page, "Mix two prompts", "text-prompts")
    set_number(tab, "Images in the sweep", 4)
    expect(page.locator("#prompts-strip")).to_be_hidden()  # until a sweep runs
    button = tab.get_by_role("button", name="Sweep from A to B")
    button.click()
    expect(page.locator("#prompts-strip img")).to_have_count(4, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#prompts-status")).to_contain_text("image 4 of 4 · done", timeout=RUN_TIMEOUT_MS)
    below, strip = button.bounding_box(), page.locator("#prompts-strip").bounding_box()
    assert 0 <= strip["y"] - (below["y"] + below["height"]) < 100  # right under the button pressed
    gif = page.locator("#prompts-gif img")  # shown, playing, on the page
    expect(gif).to_have_attribute("src", re.compile(r"sdlens-prompt-sweep.*\.gif$"), timeout=RUN_TIMEOUT_MS)
    assert Image.open(gif.get_attribute("src").split("file=", 1)[1]).n_frames == 4
    page.screenshot(path=SHOTS / "text-prompts.png", full_page=True)
    tab.get_by_label("Prompt B").fill("x" * 4001)  # refused before it starts: the strip stays, Stop greys out
    tab.get_by_role("button", name="Sweep from A to B").click()
    expect(page.get_by_text("prompt B must be at most 4000 characters, got 4001")).to_be_visible(
        timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#prompts-strip img")).to_have_count(4)
    expect(tab.get_by_role("button", name="Stop")).to_be_disabled()


def test_a_comparison_shows_its_code_and_its_link_reopens_the_sub_tab(page, app_url):
    """Inside a step: the scales compared, their script (one run per scale), and a link back to the sub-tab."""
    page.get_by_role("tab", name="Inside a step", exact=True).click()
    page.get_by_role("tab", name="Scales", exact=True).click()
    tab = page.locator("#compare-scales")
    fill(tab.get_by_label("Scales"), "1, 4")  # its name includes the info under the label
    tab.get_by_role("button", name="Compare").click()
    expect(page.locator("#scales-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    box = page.locator("#cfg_sweep-code-box")
    box.get_by_text("Show the code").click()
    code = page.locator("#cfg_sweep-code")
    # the script follows the run (an event of its own, slower on a loaded host); the editor draws the lines in view
    expect(code).to_contain_text("guidance_scales = [1.0, 4.0]", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#history")).to_contain_text(re.compile(r"scales · 1, 4: \S"), timeout=RUN_TIMEOUT_MS)
    code.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "code-compare.png")
    link = page.locator("#cfg_sweep-link textarea").input_value()
    assert "tab=cfg_sweep" in link and "entries=1%2C+4" in link, link
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        other.goto(link.replace("entries=1%2C+4", "entries=2%2C+6"))
        scales = other.locator("#compare-scales")
        expect(scales).to_be_visible()
        expect(scales.get_by_label("Scales")).to_have_value("2, 6", timeout=LINK_TIMEOUT_MS)
    finally:
        other.close()
    page.get_by_role("tab", name="Seeds", exact=True).click()  # a random seed: the link keeps the one drawn
    seeds = page.locator("#compare-seeds")
    fill(seeds.get_by_label("Seeds"), "-1, 5")
    seeds.get_by_role("button", name="Compare").click()
    expect(page.locator("#seeds-status")).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    strip, pictures = page.locator("#seeds-strip").bounding_box(), page.locator("#seeds-strip img")
    expect(pictures).to_have_count(2, timeout=RUN_TIMEOUT_MS)  # the last previews give way to the results
    for box in (pictures.nth(k).bounding_box() for k in range(2)):  # two pictures small enough to show whole
        assert box["width"] < strip["width"] / 3 and box["y"] + box["height"] <= strip["y"] + strip["height"]
    seeds.get_by_text("Show the code").click()
    expect(page.locator("#compare_seeds-link textarea")).to_have_value(re.compile(r"entries=\d+%2C\+5"),
                                                                       timeout=RUN_TIMEOUT_MS)  # follows the run


def test_guidance_taken_apart_ends_where_the_predictions_differ_most_and_shows_any_step(page):
    """The run ends on the step where the two predictions differ most, the slider with it; the slider then takes
    the last step apart: its own four pictures and its step on the status."""
    page.get_by_role("tab", name="Inside a step", exact=True).click()
    page.get_by_role("tab", name="Guidance taken apart", exact=True).click()
    tab = page.locator("#compare-parts")
    tab.get_by_role("button", name="Generate").click()
    status = page.locator("#parts-status")
    expect(status).to_contain_text("where the two predictions differ most", timeout=RUN_TIMEOUT_MS)
    last, steps = re.match(r"step (\d+) / (\d+) · .* · done · ", status.inner_text()).groups()
    shown = (re.search(r"differ most .*: step (\d+) / ", status.inner_text()).group(1), steps)
    assert last == steps  # every step previewed: the slider's positions are the steps
    expect(page.get_by_label("number input for Step to take apart")).to_have_value(shown[0])
    page.screenshot(path=SHOTS / "compare-parts.png", full_page=True)
    pictures = page.locator("#parts-gallery img")
    expect(pictures).to_have_count(4)
    widest = [pictures.nth(k).get_attribute("src") for k in range(4)]
    assert shown[0] != shown[1]
    set_number(page, "Step to take apart", shown[1])
    expect(status).to_contain_text(f"step {shown[1]} / {shown[1]} ")
    expect(status).to_contain_text("taken apart from the last run")
    expect(pictures.first).not_to_have_attribute("src", widest[0])
    assert [pictures.nth(k).get_attribute("src") for k in range(4)] != widest


def test_sending_before_a_result_says_so_and_leaves_the_other_tabs_as_they_are(page, app_url):
    fresh = page.context.browser.new_page()  # a page of its own, with no result yet
    fresh.goto(app_url)
    for button in ("#txt2img-send-img2img", "#txt2img-send-vae"):
        fresh.locator(button).click()
        expect(fresh.get_by_text("There is no result to send yet: press Generate first")).to_be_visible(
            timeout=RUN_TIMEOUT_MS)
        fresh.locator(".toast-close").click()
    expect(fresh.get_by_role("tab", name="Text to image", exact=True)).to_have_attribute("aria-selected", "true")
    fresh.get_by_role("tab", name="Image to image", exact=True).click()
    expect(fresh.locator("#tab-img2img").get_by_label("Prompt", exact=True)).to_be_editable()
    expect(fresh.locator("[data-testid=status-tracker]", has_text="Error")).to_have_count(0)
    fresh.close()


def test_the_sampler_menu_says_what_each_sampler_does_and_runs_the_one_chosen(page, app_url):
    fresh = page.context.browser.new_page()
    fresh.goto(app_url)
    tab = fresh.locator("#tab-txt2img")
    tab.get_by_label("Sampler").click()
    fresh.get_by_role("option", name="euler: one straight step along the noise prediction").click()
    set_number(fresh, "Steps", 3)
    tab.get_by_role("button", name="Generate", exact=True).click()
    expect(tab.locator("#txt2img-status")).to_contain_text("step 3 / 3", timeout=RUN_TIMEOUT_MS)
    tab.get_by_text("Show the code").click()
    expect(tab.locator("#txt2img-code")).to_contain_text("EulerDiscreteScheduler")  # the value behind the words
    fresh.close()
