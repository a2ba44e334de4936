"""Encode/decode speed of webrt's tokenizer on the test corpus.

    python -m webrt.tokenizer.bench path/to/tokenizer.json [more.json ...] [--corpus FILE]

Prints load time, cold (empty cache) and warm encode speed in tokens/s and chars/s, and decode
speed. Pure stdlib, so it runs under Pyodide too.
"""

from __future__ import annotations

import argparse
import os
import time

from webrt.tokenizer import StreamingDetokenizer, Tokenizer

_DEFAULT_CORPUS = os.path.join(
    os.path.dirname(__file__), "..", "..", "tests", "data", "tokenizer_corpus.txt"
)


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
        f"{os.path.basename(os.path.dirname(path)) or path}/{os.path.basename(path)}: "
        f"load {load_s:.2f}s | encode cold {tokens / cold_s:,.0f} tok/s {chars / cold_s:,.0f} chars/s"
        f" | warm {tokens / warm_s:,.0f} tok/s {chars / warm_s:,.0f} chars/s"
        f" | decode {tokens / decode_s:,.0f} tok/s | stream {tokens / stream_s:,.0f} tok/s"
        f" ({tokens} tokens, {chars} chars)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizers", nargs="+", help="tokenizer.json files")
    parser.add_argument("--corpus", default=_DEFAULT_CORPUS, help="text file, one sample a line")
    parser.add_argument("--repeat-corpus", type=int, default=4, help="concatenate the corpus N times")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8", newline="") as handle:
        lines = handle.read().split("\n")
    # Distinct line variants so the cold pass is not all cache hits after the first copy.
    lines = [f"{line} {i}" if i else line for i in range(args.repeat_corpus) for line in lines]
    for path in args.tokenizers:
        print(_bench_one(path, lines), flush=True)


if __name__ == "__main__":
    main()
