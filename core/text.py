"""From a prompt to the conditioning the UNet sees: tokens, then the CLIP text encoder's hidden states."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.models import ModelBundle

MAX_PROMPT_CHARS = 4000  # far past CLIP's 77 tokens; guards the tokenizer against pasted novels


@dataclass(frozen=True)
class Tokens:
    """A prompt tokenized the way the text encoder reads it."""

    input_ids: torch.Tensor        # (1, 77): start token, prompt tokens, end token, end-token padding
    length: int                    # tokens used, start and end included
    truncated: str                 # the part of the prompt past the limit ("" when it all fits)


def check_prompt(prompt: str, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{what} must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    return prompt


def tokenize(bundle: ModelBundle, prompt: str) -> Tokens:
    """Pad/truncate to the encoder's length, as the SD pipeline does; report what CLIP will not see."""
    tok = bundle.tokenizer
    check_prompt(prompt)
    body = tok(prompt, truncation=False).input_ids[:-1]     # start token + every prompt token
    kept, dropped = body[: bundle.max_length - 1], body[bundle.max_length - 1 :]
    ids = kept + [tok.eos_token_id] + [tok.pad_token_id] * (bundle.max_length - len(kept) - 1)
    return Tokens(
        input_ids=torch.tensor([ids]),                       # (1, 77)
        length=len(kept) + 1,
        truncated=tok.decode(dropped) if dropped else "",
    )


@torch.no_grad()
def encode(bundle: ModelBundle, tokens: Tokens) -> torch.Tensor:
    """The text encoder's last hidden state: (1, 77, hidden)."""
    return bundle.text_encoder(tokens.input_ids.to(bundle.device))[0]
