"""Encode/decode speed of webrt's tokenizer on the test corpus.

    python -m webrt.tokenizer.bench path/to/tokenizer.json [more.json ...] [--corpus FILE]

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


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def _bench_one(path: str, lines: list[str]) -> str:
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

    return (
        f"{_label(path)}: load {load_s:.2f}s"
        f" | encode lines cold {_rate(tokens, cold_s)} tok/s {_rate(chars, cold_s)} chars/s"
        f" | warm {_rate(tokens, warm_s)} tok/s {_rate(chars, warm_s)} chars/s"
        f" | one string {_rate(whole_tokens, whole_s)} tok/s {_rate(len(whole), whole_s)} chars/s"
        f" | decode {_rate(tokens, decode_s)} tok/s | stream {_rate(tokens, stream_s)} tok/s"
        f" ({tokens} tokens, {chars} chars)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizers", nargs="+", help="tokenizer.json files")
    parser.add_argument("--corpus", default=_DEFAULT_CORPUS, help="text file, one sample a line")
    parser.add_argument("--repeat", type=int, default=4, help="use N variants of each line")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    # Distinct line variants so the cold pass is not all cache hits after the first copy.
    lines = [f"{line} {i}" if i else line for i in range(args.repeat) for line in lines]
    for path in args.tokenizers:
        print(_bench_one(path, lines), flush=True)


if __name__ == "__main__":
    main()
