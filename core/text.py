"""From a prompt to the conditioning the UNet sees: tokens, token + position embeddings, the CLIP text
encoder's hidden states; and the edits made on the way (a token's embedding swapped or mixed, learned
textual-inversion embeddings written into the prompt, two prompts' encodings mixed).

Learned embeddings belong to whoever loaded them: they are passed in with each call, and neither the
shared tokenizer nor the shared text encoder is ever changed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.models import ModelBundle

Learned = dict[str, torch.Tensor]  # a textual-inversion token as written in prompts -> its vectors (n, hidden)
LEARNED_SUFFIXES = (".safetensors", ".bin", ".pt")

MAX_PROMPT_CHARS = 4000  # far past CLIP's 77 tokens; guards the tokenizer against pasted novels


@dataclass(frozen=True)
class Tokens:
    """A prompt tokenized the way the text encoder reads it."""

    input_ids: torch.Tensor        # (1, 77): start token, prompt tokens, end token, end-token padding
    length: int                    # tokens used, start and end included
    truncated: str                 # the part of the prompt past the limit ("" when it all fits)
    learned: tuple[tuple[int, str, int], ...] = ()  # (position, learned token, which of its vectors)
    names: tuple[str, ...] = field(default=(), compare=False)  # each position's token as text


def check_prompt(prompt: str, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{what} must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    return prompt


def tokenize(bundle: ModelBundle, prompt: str, learned: Learned | None = None) -> Tokens:
    """Pad/truncate to the encoder's length, as the SD pipeline does; report what CLIP will not see.

    Tokens of `learned` written in the prompt take one position per vector (their id there is a
    placeholder, `encode` writes the vectors in)."""
    tok = bundle.tokenizer
    check_prompt(prompt)
    body, names, slots = [tok.bos_token_id], [tok.bos_token], []
    for piece in _split_learned(prompt, learned or {}):
        if learned and piece in learned:
            for row in range(len(learned[piece])):
                slots.append((len(body), piece, row))
                body.append(tok.unk_token_id)
                names.append(piece if len(learned[piece]) == 1 else f"{piece}[{row}]")
        elif piece.strip():
            ids = tok(piece, add_special_tokens=False).input_ids
            body += ids
            names += tok.convert_ids_to_tokens(ids)
    limit = bundle.max_length - 1
    kept, dropped = body[:limit], body[limit:]
    padding = bundle.max_length - len(kept) - 1
    ids = kept + [tok.eos_token_id] + [tok.pad_token_id] * padding
    return Tokens(
        input_ids=torch.tensor([ids]),                       # (1, 77)
        length=len(kept) + 1,
        truncated=_text_of(bundle, dropped, {p - limit: name for p, name, _ in slots if p >= limit}),
        learned=tuple(slot for slot in slots if slot[0] < limit),
        names=tuple(names[:limit] + tok.convert_ids_to_tokens([tok.eos_token_id] + [tok.pad_token_id] * padding)),
    )


def _text_of(bundle: ModelBundle, ids: list[int], learned_at: dict[int, str]) -> str:
    """Token ids back to text; `learned_at` names the learned tokens among them by index."""
    words, run = [], []
    for i, t in enumerate(ids):
        if i in learned_at:
            words += [bundle.tokenizer.decode(run), learned_at[i]]
            run = []
        else:
            run.append(t)
    return " ".join(word.strip() for word in [*words, bundle.tokenizer.decode(run)] if word.strip())


def _split_learned(prompt: str, learned: Learned) -> list[str]:
    """The prompt cut around the learned tokens it contains (longest names first)."""
    if not learned:
        return [prompt]
    pattern = "|".join(re.escape(name) for name in sorted(learned, key=len, reverse=True))
    return [piece for piece in re.split(f"({pattern})", prompt) if piece]


@torch.no_grad()
def encode(bundle: ModelBundle, tokens: Tokens, learned: Learned | None = None) -> torch.Tensor:
    """The text encoder's last hidden state, (1, 77, hidden); learned tokens' vectors written in first."""
    if not tokens.learned:
        return bundle.text_encoder(tokens.input_ids.to(bundle.device))[0]
    return encode_embeddings(bundle, with_learned(bundle, tokens, learned or {}))


def token_embeddings(bundle: ModelBundle, input_ids: torch.Tensor) -> torch.Tensor:
    """(1, 77) ids -> (1, 77, hidden): the rows of the token embedding table, before any position is added."""
    return bundle.text_encoder.embeddings.token_embedding(input_ids.to(bundle.device))


def position_embeddings(bundle: ModelBundle) -> torch.Tensor:
    """(1, 77, hidden): what the encoder adds to the token at each position."""
    positions = torch.arange(bundle.max_length, device=bundle.device)[None]  # (1, 77)
    return bundle.text_encoder.embeddings.position_embedding(positions)


def with_learned(bundle: ModelBundle, tokens: Tokens, learned: Learned) -> torch.Tensor:
    """The prompt's token embeddings (1, 77, hidden) with the learned vectors in their positions."""
    embeds = token_embeddings(bundle, tokens.input_ids).clone()
    for position, name, row in tokens.learned:
        embeds[0, position] = learned[name][row].to(embeds)
    return embeds


def encode_embeddings(bundle: ModelBundle, token_embeds: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """What the text encoder does after its token lookup: add the position embeddings, run the transformer
    layers with CLIP's causal mask (each token sees only those before it), apply the final layer norm.
    Equals `text_encoder(input_ids)` for unedited embeddings. `causal=False` lets every token see every
    other, to show what the mask does."""
    encoder = bundle.text_encoder
    hidden = token_embeds + position_embeddings(bundle)      # (1, 77, hidden)
    n = hidden.shape[1]
    mask = None
    if causal:  # additive: -inf above the diagonal
        mask = torch.full((n, n), torch.finfo(hidden.dtype).min, device=hidden.device, dtype=hidden.dtype).triu(1)
        mask = mask[None, None]                              # (1, 1, 77, 77)
    return encoder.final_layer_norm(encoder.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state)


def token_id(bundle: ModelBundle, word: str) -> int:
    """A word that is one token, or a token id written as a number -> the id; else ValueError saying why."""
    tok, word = bundle.tokenizer, word.strip()
    if not word:
        raise ValueError("the word is empty: give a word or a token id")
    if word.isdigit():
        if int(word) >= len(tok):
            raise ValueError(f"token id {word} is outside the vocabulary (0 to {len(tok) - 1})")
        return int(word)
    ids = tok(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = ", ".join(t.replace("</w>", "") for t in tok.convert_ids_to_tokens(ids))
        raise ValueError(f"{word!r} is {len(ids)} tokens ({pieces}): give a word that is one token, or a token id")
    return ids[0]


Ingredient = int | torch.Tensor  # a token id, or a vector (hidden,) such as a learned embedding


def check_position(tokens: Tokens, position: int) -> None:
    """A token edit's position must be one of the prompt's own tokens (not the start, end or padding)."""
    if not 1 <= position <= tokens.length - 2:
        raise ValueError(f"position must be one of the prompt's tokens, from 1 to {tokens.length - 2}, got {position}")


def blend_at(bundle: ModelBundle, tokens: Tokens, learned: Learned, position: int,
             parts: list[tuple[Ingredient, float]]) -> torch.Tensor:
    """The prompt's token embeddings (1, 77, hidden) with the one at `position` replaced by a weighted sum
    of token embeddings and vectors: a swap is one part of weight 1, a mix two parts."""
    check_position(tokens, position)
    embeds = with_learned(bundle, tokens, learned)
    table = bundle.text_encoder.embeddings.token_embedding.weight                  # (vocab, hidden)
    rows = [table[part] if isinstance(part, int) else part.to(table) for part, _ in parts]
    embeds[0, position] = sum(weight * row for row, (_, weight) in zip(rows, parts))
    return embeds


def load_learned(path: str | Path, hidden: int) -> Learned:
    """Textual-inversion embeddings from a file: diffusers' learned_embeds.safetensors / .bin ({token: vector})
    or a .pt with `string_to_param` (the original and AUTOMATIC1111 format). Nothing is unpickled but tensors
    and plain containers (weights_only); a vector of another width than `hidden` is refused."""
    path = Path(path)
    if path.suffix not in LEARNED_SUFFIXES:
        raise ValueError(f"{path.name}: textual-inversion embeddings come as {', '.join(LEARNED_SUFFIXES)} files")
    try:
        data = load_file(path) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every way a file can fail to load says the same to the user
        kind = "a safetensors file" if path.suffix == ".safetensors" else "a torch file of tensors alone"
        # not torch's own message: it suggests loading the file unsafely
        raise ValueError(f"{path.name} cannot be read as embeddings: it is not {kind} ({type(err).__name__})") from err
    if isinstance(data, dict) and "string_to_param" in data:  # {"string_to_param": {"*": (n, hidden)}, "name": ...}
        params = data["string_to_param"]
        name = data.get("name") or path.stem
        data = {f"<{name}>": next(iter(params.values()))} if isinstance(params, dict) and params else None
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path.name} holds no embeddings: expected {{token: vector}} or a string_to_param entry")
    learned = {}
    for name, vectors in data.items():
        vectors = vectors.detach().float().reshape(-1, vectors.shape[-1]) if vectors.dim() else vectors
        if vectors.dim() != 2 or vectors.shape[-1] != hidden:
            raise ValueError(f"{path.name}: {name!r} is {vectors.shape[-1] if vectors.dim() else 0} wide, but this "
                             f"model's text encoder is {hidden} wide (each model needs its own embeddings)")
        learned[str(name)] = vectors                                       # (n, hidden)
    return learned
