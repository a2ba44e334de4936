"""`Tokenizer`: encode/decode with a HF `tokenizer.json`, in pure Python (runs on Pyodide)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from webrt.errors import TokenizerError
from webrt.tokenizer.added_tokens import AddedToken, AddedVocabulary
from webrt.tokenizer.decoders import decoder_from_spec
from webrt.tokenizer.models import model_from_spec
from webrt.tokenizer.normalizers import normalizer_from_spec
from webrt.tokenizer.post_processors import post_processor_from_spec
from webrt.tokenizer.pre_tokenizers import pre_tokenizer_from_spec
from webrt.tokenizer.schema import check_tokenizer_json

# Special-token names recognised as BOS / EOS when no tokenizer_config.json says otherwise.
_KNOWN_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
_KNOWN_EOS = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")


@dataclass
class Truncation:
    """tokenizer.json `truncation` for single sequences: keep at most `max_length` ids."""

    max_length: int
    direction: str = "Right"

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Truncation:
        if spec.get("strategy", "LongestFirst") == "OnlySecond":
            raise TokenizerError("truncation strategy OnlySecond needs a pair of sequences")
        return cls(int(spec["max_length"]), spec.get("direction", "Right"))

    def apply(self, ids: list[int], reserved: int) -> list[int]:
        limit = max(self.max_length - reserved, 0)
        if len(ids) <= limit:
            return ids
        return ids[:limit] if self.direction == "Right" else ids[len(ids) - limit :]


@dataclass
class Padding:
    """tokenizer.json `padding`: pad to a fixed length (or, for one sequence, its own length)."""

    fixed_length: int | None
    pad_id: int
    direction: str = "Right"
    pad_to_multiple_of: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Padding:
        strategy = spec.get("strategy", "BatchLongest")
        fixed = strategy.get("Fixed") if isinstance(strategy, dict) else None
        return cls(fixed, int(spec.get("pad_id", 0)), spec.get("direction", "Right"),
                   spec.get("pad_to_multiple_of"))

    def apply(self, ids: list[int]) -> list[int]:
        target = self.fixed_length if self.fixed_length is not None else len(ids)
        multiple = self.pad_to_multiple_of
        if multiple and target % multiple:
            target += multiple - target % multiple
        missing = target - len(ids)
        if missing <= 0:
            return ids
        pads = [self.pad_id] * missing
        return ids + pads if self.direction == "Right" else pads + ids


def _special_token_name(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A tokenizer.json tokenizer: BPE (byte-level or SentencePiece-style) or WordPiece.

    `encode` / `decode` give the same ids and text as HF `tokenizers` for the supported
    components; anything else raises `TokenizerError` naming the feature when loading.
    """

    def __init__(self, spec: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        check_tokenizer_json(spec)  # a malformed field is a TokenizerError naming it
        self.model = model_from_spec(spec["model"])
        self.normalizer = normalizer_from_spec(spec.get("normalizer"))
        self.pre_tokenizer = pre_tokenizer_from_spec(spec.get("pre_tokenizer"))
        self.post_processor = post_processor_from_spec(spec.get("post_processor"))
        self.decoder = decoder_from_spec(spec.get("decoder"))
        trunc, pad = spec.get("truncation"), spec.get("padding")
        #: Truncation applied by `encode` (set to None to disable), as HF does.
        self.truncation: Truncation | None = Truncation.from_spec(trunc) if trunc else None
        #: Padding applied by `encode` (set to None to disable), as HF does.
        self.padding: Padding | None = Padding.from_spec(pad) if pad else None

        vocab = self.model.vocab
        added = []
        for entry in spec.get("added_tokens") or []:
            token = AddedToken.from_spec(entry)
            model_id = vocab.get(token.content)
            if model_id is not None and model_id != token.id:
                token = replace(token, id=model_id)  # HF keeps the model's id
            added.append(token)
        self.added_tokens: list[AddedToken] = added
        self._added_vocabulary = AddedVocabulary(added, self.normalizer)
        self._special_ids = frozenset(t.id for t in added if t.special)

        self._id_to_token: dict[int, str] = {i: t for t, i in vocab.items()}
        self._token_to_id: dict[str, int] = dict(vocab)
        for token in added:
            # HF spells a `normalized` added token by its normalized form when decoding.
            spelled = token.content
            if token.normalized and self.normalizer is not None:
                spelled = self.normalizer(token.content)
            self._id_to_token[token.id] = spelled
            self._token_to_id[token.content] = token.id

        if config is not None and not isinstance(config, dict):
            raise TokenizerError(f"tokenizer_config.json must hold a JSON object, got {type(config).__name__}")
        self._bos_token_id, self._eos_token_id = self._find_bos_eos(config or {})

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: dict[str, Any], config: dict[str, Any] | None = None) -> Tokenizer:
        """From a parsed tokenizer.json (and optionally a parsed tokenizer_config.json)."""
        return cls(spec, config)

    @classmethod
    def from_json_str(cls, text: str, config_json: str | None = None) -> Tokenizer:
        """From tokenizer.json text (and optionally tokenizer_config.json text)."""
        try:
            spec = json.loads(text)
            config = json.loads(config_json) if config_json else None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of > 4300 digits, deep nesting
            raise TokenizerError(f"tokenizer JSON is malformed: {exc}") from exc
        return cls(spec, config)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None
    ) -> Tokenizer:
        """From a tokenizer.json path; a tokenizer_config.json beside it (or at `config_path`)
        supplies the BOS/EOS token names."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if config_path is None:
            sibling = os.path.join(os.path.dirname(os.fspath(path)), "tokenizer_config.json")
            config_path = sibling if os.path.exists(sibling) else None
        config_text = None
        if config_path is not None:
            with open(config_path, encoding="utf-8") as handle:
                config_text = handle.read()
        return cls.from_json_str(text, config_text)

    def _find_bos_eos(self, config: dict[str, Any]) -> tuple[int | None, int | None]:
        found = []
        for key, known in (("bos_token", _KNOWN_BOS), ("eos_token", _KNOWN_EOS)):
            if key in config:
                name = _special_token_name(config[key])
                found.append(self._token_to_id.get(name) if name is not None else None)
                continue
            specials = {t.content: t.id for t in self.added_tokens if t.special}
            found.append(next((specials[n] for n in known if n in specials), None))
        return found[0], found[1]

    # --- vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens, added tokens included (HF `get_vocab_size(True)`)."""
        return len(self._token_to_id)

    @property
    def bos_token_id(self) -> int | None:
        """BOS id from tokenizer_config.json, else from a well-known special token, else None."""
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """EOS id from tokenizer_config.json, else from a well-known special token, else None."""
        return self._eos_token_id

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special."""
        return self._special_ids

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary or added token, None if unknown."""
        return self._token_to_id.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id (as the decoder sees it), None if unknown."""
        return self._id_to_token.get(token_id)

    # --- encode / decode -------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the post-processor adds BOS/EOS etc."""
        ids: list[int] = []
        tokenize = self.model.tokenize
        pre_tokenizer = self.pre_tokenizer
        for piece, token_id, at_start in self._added_vocabulary.split(text):
            if token_id is not None:
                ids.append(token_id)
                continue
            if pre_tokenizer is None:
                ids.extend(tokenize(piece))
                continue
            words, _ = pre_tokenizer.pre_tokenize([piece], at_start)
            for word in words:
                ids.extend(tokenize(word))
        processor = self.post_processor
        if self.truncation is not None:
            reserved = processor.added_count() if processor is not None and add_special_tokens else 0
            ids = self.truncation.apply(ids, reserved)
        if processor is not None:
            ids = processor.process(ids, add_special_tokens)
        if self.padding is not None:
            ids = self.padding.apply(ids)
        return ids

    def decode_tokens(self, ids: Iterable[int], skip_special_tokens: bool = False) -> list[str]:
        """Token strings of `ids` (unknown ids are skipped, as HF does)."""
        lookup = self._id_to_token.get
        special = self._special_ids
        tokens = []
        for token_id in ids:
            token = lookup(token_id)
            if token is None or (skip_special_tokens and token_id in special):
                continue
            tokens.append(token)
        return tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` through the tokenizer's decoder."""
        tokens = self.decode_tokens(ids, skip_special_tokens)
        if self.decoder is None:
            return " ".join(tokens)
        return "".join(self.decoder(tokens))
