"""Pure-Python HF `tokenizer.json` tokenizers (byte-level BPE, SentencePiece BPE, WordPiece).

Runs on Pyodide: stdlib only (`json`, `re`, `unicodedata`), no numpy, no `regex` module.

    tok = Tokenizer.from_file("tokenizer.json")
    ids = tok.encode("Hello world")
    text = tok.decode(ids)
    stream = StreamingDetokenizer(tok)
    pieces = [stream.put(i) for i in ids] + [stream.flush()]
"""

from webrt.tokenizer.streaming import StreamingDetokenizer
from webrt.tokenizer.tokenizer import Tokenizer

__all__ = ["StreamingDetokenizer", "Tokenizer"]
