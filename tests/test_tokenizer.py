"""The repository's CLIP tokenizer files against the Deep Dive notebook's token table."""
from transformers import CLIPTokenizer

from core import text
from core.models import TOKENIZER_DIR


def test_notebook_token_ids():
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = tok("A picture of a puppy.", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:8] == [49406, 320, 1674, 539, 320, 6829, 269, 49407]
    assert ids[8:] == [49407] * 69
    assert tok("panda").input_ids == [49406, 12952, 49407]
    assert tok("cat").input_ids == [49406, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77


def test_tokenize_pads_like_the_tokenizer(tiny_bundle):
    tokens = text.tokenize(tiny_bundle, "A picture of a puppy.")
    ref = tiny_bundle.tokenizer("A picture of a puppy.", padding="max_length", max_length=77,
                                truncation=True, return_tensors="pt").input_ids
    assert tokens.input_ids.tolist() == ref.tolist()
    assert tokens.length == 8 and tokens.truncated == ""


def test_tokenize_reports_what_clip_cuts_off(tiny_bundle):
    prompt = " ".join(["red"] * 80) + " giraffe"
    tokens = text.tokenize(tiny_bundle, prompt)
    ref = tiny_bundle.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert tokens.input_ids[0].tolist() == ref
    assert tokens.length == 77
    assert tokens.truncated.split() == ["red"] * 5 + ["giraffe"]  # 75 prompt tokens fit
