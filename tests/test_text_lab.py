"""The text lab: the encoder run by hand against the real one, token edits, textual inversion, prompt mixing."""
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from PIL import Image
from safetensors.torch import save_file

from core import text
from core.engine import Engine
from core.sampler import Settings
from core.views import heat_image
from core.toyworld.data import COLORS
from core.toyworld.evaluate import Reader
from core.toyworld.textual_inversion import TEAL, TOKEN
from tests.conftest import toy_app

SMALL = Settings(steps=6, guidance_scale=7.5, seed=3, height=64, width=64, preview_every=0)
HIDDEN = 32  # the tiny test model's text encoder width


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine(tiny_bundle)


def ids_of(bundle, prompt):
    return text.tokenize(bundle, prompt).input_ids


@torch.no_grad()
def test_encoder_by_hand_equals_the_text_encoder_and_needs_its_causal_mask(tiny_bundle):
    ids = ids_of(tiny_bundle, "a picture of a puppy")
    reference = tiny_bundle.text_encoder(ids)[0]
    embeds = text.token_embeddings(tiny_bundle, ids)
    assert torch.equal(text.encode_embeddings(tiny_bundle, embeds), reference)
    assert (text.encode_embeddings(tiny_bundle, embeds, causal=False) - reference).abs().max() > 1e-3


@torch.no_grad()
def test_swapping_a_word_for_itself_changes_nothing(tiny_bundle):
    tokens = text.tokenize(tiny_bundle, "a picture of a puppy")
    same = text.blend_at(tiny_bundle, tokens, {}, 5, [(text.token_id(tiny_bundle, "puppy"), 1.0)])
    assert torch.equal(text.encode_embeddings(tiny_bundle, same), text.encode(tiny_bundle, tokens))


@torch.no_grad()
def test_a_swap_changes_the_encoding_only_from_its_position_on(tiny_bundle):
    tokens = text.tokenize(tiny_bundle, "a picture of a puppy in the snow")
    plain = text.encode(tiny_bundle, tokens)[0]                                       # (77, hidden)
    swapped = text.encode_embeddings(tiny_bundle, text.blend_at(
        tiny_bundle, tokens, {}, 5, [(text.token_id(tiny_bundle, "cat"), 1.0)]))[0]
    changed = (swapped - plain).abs().amax(-1)                                        # (77,)
    assert torch.equal(swapped[:5], plain[:5])  # causal attention: earlier tokens never see the swap
    assert (changed[5:] > 1e-4).all()


@torch.no_grad()
def test_mix_weight_one_is_the_pure_word(tiny_bundle):
    tokens = text.tokenize(tiny_bundle, "a picture of a puppy")
    cat, panda = text.token_id(tiny_bundle, "cat"), text.token_id(tiny_bundle, "panda")
    mixed = text.blend_at(tiny_bundle, tokens, {}, 5, [(cat, 1.0), (panda, 0.0)])
    pure = text.blend_at(tiny_bundle, tokens, {}, 5, [(cat, 1.0)])
    assert torch.equal(mixed, pure)
    half = text.blend_at(tiny_bundle, tokens, {}, 5, [(cat, 0.4), (panda, 0.6)])[0, 5]
    table = tiny_bundle.text_encoder.embeddings.token_embedding.weight
    assert torch.allclose(half, 0.4 * table[cat] + 0.6 * table[panda])


def test_prompt_mix_ends_are_the_pure_prompts(engine):
    for factor, prompt in ((1.0, "a red circle"), (0.0, "a blue star")):
        mixed = list(engine.mix_prompts("a red circle", "a blue star", factor, "", SMALL).frames)[-1].latents
        pure = list(engine.txt2img(prompt, "", SMALL).frames)[-1].latents
        assert torch.equal(mixed, pure)
    middle = list(engine.mix_prompts("a red circle", "a blue star", 0.5, "", SMALL).frames)[-1].latents
    assert not torch.equal(middle, pure)


@pytest.mark.parametrize("prompt_b, count, message", [
    ("x" * 4001, 3, "prompt B must be at most 4000 characters, got 4001"),
    ("a blue star", 1, "the sweep takes from 2 to 12 images, got 1"),
])
def test_a_sweep_is_checked_before_its_first_image(engine, prompt_b, count, message):
    """The page checks a sweep with `check_sweep` before it starts; the sweep itself refuses the same."""
    with pytest.raises(ValueError, match=message):
        engine.check_sweep("a red circle", prompt_b, "", SMALL, count)
    with pytest.raises(ValueError, match=message):
        next(engine.prompt_sweep("a red circle", prompt_b, "", SMALL, count=count))
    assert engine.check_sweep("a red circle", "a blue star", "", SMALL, 3).preview_every == 0


def test_a_sweep_with_a_random_seed_draws_it_once(engine):
    """Sweep from A to B (same seed): with seed -1 every image starts from one drawn noise, so a sweep from a
    prompt to itself gives the same image throughout."""
    sweep = list(engine.prompt_sweep("a red circle", "a red circle", "", replace(SMALL, seed=-1), count=3))
    assert len({image.tobytes() for _, image, _ in sweep}) == 1
    assert engine.check_sweep("a red circle", "a blue star", "", replace(SMALL, seed=-1), 3).seed >= 0


def test_sweep_runs_from_a_to_b(engine):
    sweep = list(engine.prompt_sweep("a red circle", "a blue star", "", SMALL, count=3))
    assert [factor for factor, _, _ in sweep] == [1.0, 0.5, 0.0]
    alone = list(engine.txt2img("a blue star", "", SMALL).frames)[-1].image
    assert sweep[-1][1].tobytes() == alone.tobytes()
    assert [notes for _, _, notes in sweep] == [()] * 3
    _, _, notes = next(engine.prompt_sweep("", "a blue star", "", SMALL, count=2))  # what each image's run says
    assert notes == ("Prompt A is empty: CLIP encodes it as no text at all",)


def test_edit_token_gives_the_prompt_and_its_edit_from_the_same_noise(engine):
    plain, swapped = engine.edit_token("a red circle", "", SMALL, 2, [("red", 1.0)])
    a, b = list(plain.frames), list(swapped.frames)
    assert len(a) == len(b) == SMALL.steps and torch.equal(a[-1].latents, b[-1].latents)  # red -> red
    plain, swapped = engine.edit_token("a red circle", "", SMALL, 2, [("blue", 1.0)])
    assert not torch.equal(list(plain.frames)[-1].latents, list(swapped.frames)[-1].latents)


# --- words, positions, and what is refused ---

@pytest.mark.parametrize("word, message", [
    ("stegosaurus", r"'stegosaurus' is 3 tokens \(ste, go, saurus\): give a word that is one token, or a token id"),
    ("", "the word is empty: give a word or a token id"),
    ("99999", r"token id 99999 is outside the vocabulary \(0 to 49407\)"),
])
def test_words_that_are_not_one_token_are_refused(engine, word, message):
    with pytest.raises(ValueError, match=message):
        engine.token_id(word)


def test_token_ids_and_positions(engine):
    assert engine.token_id("cat") == 2368 and engine.token_id("6829") == 6829
    assert engine.position_of("a picture of a puppy", "puppy") == 5 == engine.position_of("a picture of a puppy", "5")
    with pytest.raises(ValueError, match=r"'cat' is not one of the prompt's tokens \(a, picture, of, a, puppy\)"):
        engine.position_of("a picture of a puppy", "cat")
    with pytest.raises(ValueError, match="position must be one of the prompt's tokens, from 1 to 5, got 0"):
        engine.edit_token("a picture of a puppy", "", SMALL, 0, [("cat", 1.0)])
    with pytest.raises(ValueError, match=r"position must be one of the prompt's tokens, from 1 to 0, got 1"):
        engine.edit_token("", "", SMALL, 1, [("cat", 1.0)])


def test_token_view_lists_tokens_and_proves_the_encoder(engine):
    view = engine.views.token_view("A picture of a puppy.")
    assert [token for _, token, *_ in view.rows] == [49406, 320, 1674, 539, 320, 6829, 269, 49407]
    assert view.padding == 69 and view.max_diff == 0.0 and view.max_diff_without_mask > 1e-3
    heat = np.asarray(view.token_heat)
    margin = view.token_heat.width - HIDDEN * 4  # the rows' names, left of 4 px a value
    assert heat.shape[0] == 8 * 16 and margin > 40
    table = engine.bundle.text_encoder.get_input_embeddings().weight[[row[1] for row in view.rows]]
    assert view.token_range == table.abs().max().item()  # the value drawn in full colour
    assert heat[:, margin:, 1].min() == 0  # that cell in full blue or red: no green left
    names = heat[:, :margin].min(axis=2).reshape(8, 16, margin)  # black text on white, in each row's band
    assert [(row < 100).sum() > 10 for row in names] == [True] * 8
    assert (names[:, :, -4:] == 255).all()  # a white gap before the values
    wide = heat_image(torch.randn(8, 768), [f"{at} {name}" for at, _, name, *_ in view.rows])  # SD's: 1 px a value
    assert wide.width - 768 == margin and wide.height == 8 * 16


# --- textual inversion ---

def test_each_accepted_format_loads(engine, tmp_path):
    vector = torch.randn(HIDDEN)
    save_file({"<cat-toy>": vector}, tmp_path / "learned_embeds.safetensors")
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    torch.save({"string_to_param": {"*": torch.randn(2, HIDDEN)}, "name": "style", "step": 500},
               tmp_path / "style.pt")
    for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
        learned = engine.load_learned(tmp_path / name)
        assert list(learned) == ["<cat-toy>"] and torch.equal(learned["<cat-toy>"][0], vector)
    assert engine.load_learned(tmp_path / "style.pt")["<style>"].shape == (2, HIDDEN)


def test_a_pickle_carrying_code_is_refused_without_running_it(engine, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "learned_embeds.bin"
    path.write_bytes(pickle.dumps({"<evil>": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="learned_embeds.bin cannot be read as embeddings: it is not a torch file of "
                                         "tensors alone") as refused:
        engine.load_learned(path)
    assert not marker.exists()
    assert "weights_only" not in str(refused.value)  # torch's advice to load it unsafely is not passed on


@pytest.mark.parametrize("content, message", [
    ({"<wide>": torch.randn(768)}, "'<wide>' is 768 wide, but this model's text encoder is 32 wide"),
    ({"step": 5}, "holds no embeddings"),
])
def test_wrong_widths_and_other_contents_are_refused(engine, tmp_path, content, message):
    path = tmp_path / "learned_embeds.bin"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        engine.load_learned(path)


def test_other_files_are_refused(engine, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: textual-inversion embeddings come as .safetensors, .bin, .pt"):
        engine.load_learned(tmp_path / "notes.txt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="notes.pt cannot be read as embeddings: it is not a torch file of tensors"):
        engine.load_learned(tmp_path / "notes.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"broken.safetensors cannot be read as embeddings: it is not a safetensors "
                                         r"file \(\w+\)$"):
        engine.load_learned(tmp_path / "broken.safetensors")


@torch.no_grad()
def test_learned_tokens_in_a_prompt_take_their_vectors_and_change_nothing_shared(engine, tiny_bundle):
    learned = {"<style>": torch.randn(2, HIDDEN)}
    table = tiny_bundle.text_encoder.embeddings.token_embedding.weight.clone()
    vocabulary = len(tiny_bundle.tokenizer)
    tokens = text.tokenize(tiny_bundle, "a cat in <style> style", learned)
    assert tokens.learned == ((4, "<style>", 0), (5, "<style>", 1)) and tokens.length == 8
    assert tokens.names[3:7] == ("in</w>", "<style>[0]", "<style>[1]", "style</w>")
    embeds = text.with_learned(tiny_bundle, tokens, learned)
    assert torch.equal(embeds[0, 4:6], learned["<style>"])
    assert torch.equal(text.encode(tiny_bundle, tokens, learned), text.encode_embeddings(tiny_bundle, embeds))
    assert len(tiny_bundle.tokenizer) == vocabulary
    assert torch.equal(tiny_bundle.text_encoder.embeddings.token_embedding.weight, table)
    assert text.tokenize(tiny_bundle, "a cat in <style> style").learned == ()  # another user's prompt


# --- on the trained toy model ---

def shape_color(image) -> np.ndarray:
    pixels = np.asarray(image, dtype=float)
    return pixels[np.abs(pixels - COLORS["white"]).sum(-1) > 120].mean(0)  # the pixels off the white ground


def nearest_named(rgb: np.ndarray) -> str:
    """The nearest of the world's named colours and teal, by the sum of channel differences."""
    return min({**COLORS, "teal": TEAL}.items(), key=lambda item: np.abs(rgb - item[1]).sum())[0]


def test_the_example_embedding_paints_teal(toy_engine):
    learned = toy_engine.load_learned(toy_engine.example_embeddings()[0])
    settings = replace(toy_engine.default_settings(), preview_every=0)
    for seed in (0, 1):
        with_it = list(toy_engine.txt2img(f"a {TOKEN} circle on a white background", "", replace(settings, seed=seed),
                                          learned=learned).frames)[-1].image
        word = list(toy_engine.txt2img("a teal circle on a white background", "", replace(settings, seed=seed))
                    .frames)[-1].image
        # (23, 182, 184) with it at seed 0; the unknown word paints another colour
        assert nearest_named(shape_color(with_it)) == "teal" and nearest_named(shape_color(word)) != "teal"


def test_a_session_starts_with_the_model_s_own_embedding_and_can_go_back_to_it(toy_engine, tmp_path):
    """A script's session, as the page's, starts with <teal> loaded: a run paints the circle teal at once. After a
    file gives <teal> another vector, /load_model_embeddings (the page's "Back to the embeddings made for this
    model alone") drops the file's tokens and brings the model's own back."""
    bundle = toy_engine.bundle
    red = bundle.text_encoder.get_input_embeddings().weight[bundle.tokenizer("red").input_ids[1]].detach()
    save_file({TOKEN: red.clone(), "<other>": red.clone()}, tmp_path / "learned_embeds.safetensors")
    run = dict(prompt=f"a {TOKEN} circle on a white background", token="", learned_token=TOKEN, seed=0,
               preview_every=0, api_name="/textual_inversion")
    with toy_app(download_files=True) as client:
        _, first, status, _ = client.predict(**run)
        loaded, _ = client.predict(handle_file(str(tmp_path / "learned_embeds.safetensors")),
                                   api_name="/load_embedding")
        assert loaded == f"Loaded (for you only): `<other>` (1 vector), `{TOKEN}` (1 vector)"
        _, reddened, _, _ = client.predict(**run)
        loaded, _ = client.predict(api_name="/load_model_embeddings")
        assert loaded == f"Loaded (for you only): `{TOKEN}` (1 vector)"
        _, again, _, _ = client.predict(**run)
    assert " · done · " in status
    assert nearest_named(shape_color(Image.open(first).convert("RGB"))) == "teal"
    assert np.abs(shape_color(Image.open(reddened).convert("RGB")) - COLORS["red"]).sum() < 90  # the file's "red"
    assert Image.open(again).tobytes() == Image.open(first).tobytes()


def test_swapping_a_colour_word_recolours_the_shape(toy_engine):
    settings = replace(toy_engine.default_settings(), preview_every=0, seed=0)
    plain, swapped = toy_engine.edit_token("a red circle on a white background", "", settings, 2, [("blue", 1.0)])
    reader = Reader()
    before, after = reader.read(list(plain.frames)[-1].image), reader.read(list(swapped.frames)[-1].image)
    assert (before.color, after.color) == ("red", "blue") and before.shape == after.shape == "circle"


def test_mixing_two_colour_tokens_lands_in_between(toy_engine):
    settings = replace(toy_engine.default_settings(), preview_every=0, seed=2)
    prompt = "a red circle on a white background"
    colors = []
    for weight in (1.0, 0.5, 0.0):
        _, mixed = toy_engine.edit_token(prompt, "", settings, 2, [("red", weight), ("yellow", 1 - weight)])
        colors.append(shape_color(list(mixed.frames)[-1].image))
    red, middle, yellow = colors
    assert red[1] < middle[1] < yellow[1]  # green rises from red (220, 30, 30) toward yellow (250, 220, 40)
