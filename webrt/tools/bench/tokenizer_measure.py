"""Encode/decode speed of webrt's tokenizer on the test corpus.

    python -m webrt.tools.bench.tokenizer_measure path/to/tokenizer.json [more.json ...] [--corpus FILE]

Prints load time; encode speed (tokens/s, chars/s) line by line from an empty cache ("cold") and
again ("warm"), and of the whole text as one string; decode and streaming-detokenizer speed.
Pure stdlib, so it runs under Pyodide too.
"""

from __future__ import annotations

import argparse
import os
import time

from webrt.tokenizer import StreamingDetokenizer, Tokenizer

_DEFAULT_CORPUS = os.path.join(
    os.path.dirname(__file__), "..", "..", "tests", "data", "tokenizer_corpus.txt"
)


def _label(path: str) -> str:
    parts = [p for p in os.path.normpath(path).split(os.sep) if p not in ("", "models", "model")]
    return "/".join(parts[-2:])


def measure(path: str, lines: list[str]) -> dict[str, float | int | str]:
    """Speeds of one tokenizer on ``lines`` (see the module docstring); rates per second."""
    start = time.perf_counter()
    tokenizer = Tokenizer.from_file(path)
    load_s = time.perf_counter() - start
    tokenizer.truncation = tokenizer.padding = None
    chars = sum(len(line) for line in lines)

    start = time.perf_counter()
    encoded = [tokenizer.encode(line, add_special_tokens=False) for line in lines]
    cold_s = time.perf_counter() - start
    tokens = sum(len(ids) for ids in encoded)

    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        for line in lines:
            tokenizer.encode(line, add_special_tokens=False)
    warm_s = (time.perf_counter() - start) / repeats

    whole = "\n".join(lines)
    fresh = Tokenizer.from_file(path)
    fresh.truncation = fresh.padding = None
    start = time.perf_counter()
    whole_tokens = len(fresh.encode(whole, add_special_tokens=False))
    whole_s = time.perf_counter() - start

    start = time.perf_counter()
    for ids in encoded:
        tokenizer.decode(ids)
    decode_s = time.perf_counter() - start

    start = time.perf_counter()
    for ids in encoded:
        stream = StreamingDetokenizer(tokenizer)
        for token_id in ids:
            stream.put(token_id)
        stream.flush()
    stream_s = time.perf_counter() - start

    return {
        "tokenizer": _label(path),
        "load_s": load_s,
        "cold_tok_s": tokens / cold_s,
        "cold_chars_s": chars / cold_s,
        "warm_tok_s": tokens / warm_s,
        "one_string_tok_s": whole_tokens / whole_s,
        "decode_tok_s": tokens / decode_s,
        "stream_tok_s": tokens / stream_s,
        "tokens": tokens,
        "chars": chars,
    }


def describe(m: dict[str, float | int | str]) -> str:
    """One line of :func:`measure`'s figures."""
    return (
        f"{m['tokenizer']}: load {m['load_s']:.2f}s"
        f" | encode lines cold {m['cold_tok_s']:,.0f} tok/s {m['cold_chars_s']:,.0f} chars/s"
        f" | warm {m['warm_tok_s']:,.0f} tok/s | one string {m['one_string_tok_s']:,.0f} tok/s"
        f" | decode {m['decode_tok_s']:,.0f} tok/s | stream {m['stream_tok_s']:,.0f} tok/s"
        f" ({m['tokens']} tokens, {m['chars']} chars)"
    )


def corpus_lines(path: str = _DEFAULT_CORPUS, repeat: int = 4) -> list[str]:
    """The corpus, each line in ``repeat`` distinct variants (so a cold pass is not all cache hits)."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    return [f"{line} {i}" if i else line for i in range(repeat) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizers", nargs="+", help="tokenizer.json files")
    parser.add_argument("--corpus", default=_DEFAULT_CORPUS, help="text file, one sample a line")
    parser.add_argument("--repeat", type=int, default=4, help="use N variants of each line")
    args = parser.parse_args()
    lines = corpus_lines(args.corpus, args.repeat)
    for path in args.tokenizers:
        print(describe(measure(path, lines)), flush=True)


if __name__ == "__main__":
    main()
