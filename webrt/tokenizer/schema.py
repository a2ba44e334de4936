"""Shape checks of a tokenizer.json document, before any component is built.

Every field webrt's tokenizer reads is checked for its JSON type (and, where it matters, its
range) so that a malformed file is one :class:`TokenizerError` naming the field, never a
``KeyError`` / ``TypeError`` from deep inside a component. Component ``type`` names webrt does
not implement are left to the component builders, which name the unsupported feature.
"""

from __future__ import annotations

from typing import Any, Callable

from webrt.errors import TokenizerError

Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _nn_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _char(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 1


def _opt(check: Check) -> Check:
    """``check``, or null (for fields whose default is null)."""
    def nullable(v: Any) -> bool:
        return v is None or check(v)

    nullable.inner = check  # type: ignore[attr-defined]
    return nullable


def _one_of(*values: str) -> Check:
    return lambda v: isinstance(v, str) and v in values


def _pattern(v: Any) -> bool:
    return isinstance(v, dict) and len(v) >= 1 and (
        isinstance(v.get("String"), str) if "String" in v else isinstance(v.get("Regex"), str))


_BEHAVIOR = _one_of("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")
_SCHEME = _one_of("always", "never", "first")
_ANY: Check = lambda v: True  # noqa: E731

_TYPE_NAMES = {
    _str: "a string", _bool: "true or false", _nn_int: "a non-negative integer", _char: "one character",
    _pattern: 'a pattern object ({"String": ...} or {"Regex": ...})', _BEHAVIOR: "a split behavior name",
    _SCHEME: '"always", "never" or "first"',
}

def _describe(check: Check) -> str:
    inner = getattr(check, "inner", None)
    if inner is not None:
        return f"{_TYPE_NAMES.get(inner, 'a valid value')} or null"
    return _TYPE_NAMES.get(check, "a valid value")


# field -> (check, required); an absent optional field takes its default, null only where allowed
Fields = dict[str, tuple[Check, bool]]

NORMALIZERS: dict[str, Fields] = {
    "Strip": {"strip_left": (_bool, False), "strip_right": (_bool, False)},
    "Replace": {"pattern": (_pattern, True), "content": (_str, True)},
    "Prepend": {"prepend": (_str, True)},
    "BertNormalizer": {"clean_text": (_bool, False), "handle_chinese_chars": (_bool, False),
                       "strip_accents": (_opt(_bool), False), "lowercase": (_bool, False)},
}
PRE_TOKENIZERS: dict[str, Fields] = {
    "ByteLevel": {"add_prefix_space": (_bool, False), "use_regex": (_bool, False)},
    "Split": {"pattern": (_pattern, True), "behavior": (_BEHAVIOR, False), "invert": (_bool, False)},
    "Metaspace": {"replacement": (_char, False), "prepend_scheme": (_SCHEME, False),
                  "add_prefix_space": (_bool, False), "split": (_bool, False)},
    "Punctuation": {"behavior": (_BEHAVIOR, False)},
    "Digits": {"individual_digits": (_bool, False)},
    "CharDelimiterSplit": {"delimiter": (_char, True)},
}
DECODERS: dict[str, Fields] = {
    "Metaspace": {"replacement": (_char, False), "prepend_scheme": (_SCHEME, False),
                  "add_prefix_space": (_bool, False)},
    "WordPiece": {"prefix": (_str, False), "cleanup": (_bool, False)},
    "Replace": {"pattern": (_pattern, True), "content": (_str, True)},
    "Strip": {"content": (_char, False), "start": (_nn_int, False), "stop": (_nn_int, False)},
    "BPEDecoder": {"suffix": (_str, False)},
}
_CHILDREN = {"normalizer": "normalizers", "pre_tokenizer": "pretokenizers", "decoder": "decoders",
             "post_processor": "processors"}
_TABLES = {"normalizer": NORMALIZERS, "pre_tokenizer": PRE_TOKENIZERS, "decoder": DECODERS, "post_processor": {}}
_MAX_DEPTH = 16


def _bad(where: str, what: str, value: Any) -> TokenizerError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return TokenizerError(f"tokenizer.json {where} must be {what}, got {shown}; fix or regenerate the file.")


def _fields(spec: dict[str, Any], fields: Fields, where: str) -> None:
    for name, (check, required) in fields.items():
        if name not in spec:
            if required:
                raise TokenizerError(f"tokenizer.json {where} lacks {name!r}; fix or regenerate the file.")
            continue
        if not check(spec[name]):
            raise _bad(f"{where}.{name}", _describe(check), spec[name])


def _component(section: str, spec: Any, where: str, depth: int = 0) -> None:
    if spec is None:
        return
    if depth > _MAX_DEPTH:
        raise TokenizerError(f"tokenizer.json {where} nests Sequences deeper than {_MAX_DEPTH}")
    if not isinstance(spec, dict):
        raise _bad(where, "an object or null", spec)
    kind = spec.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type", "a component name", kind)
    if kind == "Sequence":
        key = _CHILDREN[section]
        children = spec.get(key)
        if not isinstance(children, list):
            raise _bad(f"{where}.{key}", "a list", children)
        for i, child in enumerate(children):
            _component(section, child, f"{where}.{key}[{i}]", depth + 1)
        return
    if section == "post_processor":
        _post_processor(kind, spec, where)
        return
    fields = _TABLES[section].get(kind)
    if fields:
        _fields(spec, fields, where)


def _post_processor(kind: str, spec: dict[str, Any], where: str) -> None:
    if kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            pair = spec.get(key)
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and _nn_int(pair[1])):
                raise _bad(f"{where}.{key}", "a [token, id] pair", pair)
    elif kind == "TemplateProcessing":
        specials = spec.get("special_tokens", {})
        if not isinstance(specials, dict):
            raise _bad(f"{where}.special_tokens", "an object", specials)
        for name, entry in specials.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("ids"), list) \
                    or not all(_nn_int(i) for i in entry["ids"]):
                raise _bad(f"{where}.special_tokens[{name!r}]", 'an object with "ids": [token ids]', entry)
        for key in ("single", "pair"):
            template = spec.get(key)
            if template is None:
                continue
            if not isinstance(template, list):
                raise _bad(f"{where}.{key}", "a list of template pieces", template)
            for i, item in enumerate(template):
                piece = f"{where}.{key}[{i}]"
                if not isinstance(item, dict) or len(item) != 1:
                    raise _bad(piece, 'a {"Sequence": ...} or {"SpecialToken": ...} object', item)
                (kind_name, body), = item.items()
                default_id = "A" if kind_name == "Sequence" else None  # a special token is named
                if not isinstance(body, dict) or not isinstance(body.get("id", default_id), str) \
                        or not _opt(_nn_int)(body.get("type_id")):
                    raise _bad(f"{piece}.{kind_name}", 'an object {"id": name, "type_id": n}', body)


def _vocab(model: dict[str, Any]) -> None:
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise _bad("model.vocab", "an object mapping tokens to ids", vocab)
    for token, token_id in vocab.items():
        if not _nn_int(token_id):
            raise _bad(f"model.vocab[{token!r}]", "a non-negative integer id", token_id)


def _merges(model: dict[str, Any]) -> None:
    merges = model.get("merges", [])
    if not isinstance(merges, list):
        raise _bad("model.merges", "a list", merges)
    for i, merge in enumerate(merges):
        if isinstance(merge, str):
            continue  # "a b": its split is checked by the BPE model
        if not (isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge)):
            raise _bad(f"model.merges[{i}]", 'a "left right" string or a [left, right] pair', merge)


def _model(model: Any) -> None:
    if not isinstance(model, dict):
        raise _bad("model", "an object", model)
    kind = model.get("type")
    if kind is not None and not isinstance(kind, str):
        raise _bad("model.type", "a model name", kind)
    if kind not in (None, "BPE", "WordPiece"):
        return  # the model builder names the unsupported type
    _vocab(model)
    if kind == "BPE" or (kind is None and "merges" in model):
        _merges(model)
        _fields(model, {"unk_token": (_opt(_str), False), "byte_fallback": (_bool, False), "fuse_unk": (_bool, False),
                        "continuing_subword_prefix": (_opt(_str), False), "end_of_word_suffix": (_opt(_str), False),
                        "ignore_merges": (_bool, False)}, "model")
    else:
        _fields(model, {"unk_token": (_str, False), "continuing_subword_prefix": (_str, False),
                        "max_input_chars_per_word": (_nn_int, False)}, "model")


def _added_tokens(tokens: Any) -> None:
    if tokens is None:
        return
    if not isinstance(tokens, list):
        raise _bad("added_tokens", "a list", tokens)
    for i, entry in enumerate(tokens):
        where = f"added_tokens[{i}]"
        if not isinstance(entry, dict):
            raise _bad(where, "an object", entry)
        if not _nn_int(entry.get("id")):
            raise _bad(f"{where}.id", "a non-negative integer", entry.get("id"))
        if not isinstance(entry.get("content"), str):
            raise _bad(f"{where}.content", "a string", entry.get("content"))
        for flag in ("single_word", "lstrip", "rstrip", "normalized", "special"):
            if entry.get(flag) is not None and not isinstance(entry[flag], bool):
                raise _bad(f"{where}.{flag}", "true or false", entry[flag])


def _truncation(spec: Any) -> None:
    if not spec:
        return
    if not isinstance(spec, dict):
        raise _bad("truncation", "an object or null", spec)
    if not _nn_int(spec.get("max_length")):
        raise _bad("truncation.max_length", "a non-negative integer", spec.get("max_length"))
    _fields(spec, {"direction": (_one_of("Left", "Right"), False),
                   "strategy": (_one_of("LongestFirst", "OnlyFirst", "OnlySecond"), False)}, "truncation")


def _padding(spec: Any) -> None:
    if not spec:
        return
    if not isinstance(spec, dict):
        raise _bad("padding", "an object or null", spec)
    strategy = spec.get("strategy", "BatchLongest")
    if not (strategy == "BatchLongest" or (isinstance(strategy, dict) and list(strategy) == ["Fixed"]
                                           and _nn_int(strategy["Fixed"]))):
        raise _bad("padding.strategy", '"BatchLongest" or {"Fixed": length}', strategy)
    _fields(spec, {"direction": (_one_of("Left", "Right"), False), "pad_id": (_nn_int, False),
                   "pad_to_multiple_of": (_opt(_nn_int), False)}, "padding")


def check_tokenizer_json(spec: Any) -> None:
    """Raise TokenizerError naming the first malformed field of a tokenizer.json document."""
    if not isinstance(spec, dict):
        raise TokenizerError(f"tokenizer.json must hold a JSON object, got {type(spec).__name__}")
    if spec.get("model") is None:
        raise TokenizerError("tokenizer.json has no model")
    _model(spec["model"])
    for section in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        _component(section, spec.get(section), section)
    _added_tokens(spec.get("added_tokens"))
    _truncation(spec.get("truncation"))
    _padding(spec.get("padding"))
