"""Build the CLIP tokenizer files (vocab.json, merges.txt, tokenizer_config.json) in this folder.

The source is OpenAI's byte-pair-encoding table `bpe_simple_vocab_16e6.txt.gz` (MIT licence), which
ships inside the PyPI wheel of open-clip-torch. The derivation follows OpenAI CLIP's SimpleTokenizer:
the 256 byte-to-unicode characters, the same with `</w>` appended, one entry per merge, then
`<|startoftext|>` and `<|endoftext|>`: 49,408 entries in all, exactly the vocabulary of SD v1's text
encoder.

    python -m core.clip_tokenizer.build                 # fetch the wheel with pip, then build
    python -m core.clip_tokenizer.build --bpe FILE.gz   # build from a local copy of the table
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEEL = "open-clip-torch==3.3.0"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the table
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # CLIP's context length; without it in the config, truncation does nothing

TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": MAX_LENGTH,
    "bos_token": BOS,
    "eos_token": EOS,
    "unk_token": EOS,
    "pad_token": EOS,
    "do_lower_case": True,
    "add_prefix_space": False,
    "errors": "replace",
}


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def read_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0 is a header


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer(bpe_gz: Path, out: Path = HERE) -> dict[str, int]:
    merges = read_merges(bpe_gz)
    vocab = build_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out / "merges.txt").write_text(merges_text, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return vocab


def fetch_bpe(workdir: Path) -> Path:
    """Download the open-clip-torch wheel (no install, no dependencies) and extract the table."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(workdir), WHEEL],
        check=True,
    )
    wheel = next(workdir.glob("open_clip_torch-*.whl"))
    target = workdir / "bpe_simple_vocab_16e6.txt.gz"
    with zipfile.ZipFile(wheel) as zf:
        target.write_bytes(zf.read(BPE_IN_WHEEL))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpe", type=Path, help="local bpe_simple_vocab_16e6.txt.gz (default: fetch the wheel)")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bpe = args.bpe or fetch_bpe(Path(tmp))
        vocab = write_tokenizer(bpe, args.out)
    print(f"wrote {len(vocab)} tokens and {len(vocab) - 2 * 256 - 2} merges to {args.out}")


if __name__ == "__main__":
    main()
