"""Oniguruma-style regexes (as written in tokenizer.json) on Python's stdlib `re`.

HF `tokenizers` compiles `Split` patterns with Oniguruma, whose classes `\\p{L}`, `\\p{N}`, `\\s`, ...
are Unicode-aware. Python's `re` has no `\\p{..}` and its `\\s`/`\\w` differ, and Pyodide has no
third-party `regex` module. So this module rewrites such a pattern into a plain `re` pattern in
which every Unicode class is spelled out as explicit code-point ranges, computed from the running
Python's `unicodedata` (general categories) and from the fixed Unicode `White_Space` list.
Everything else (alternation, `(?i:...)`, lookaheads, greedy/possessive quantifiers) keeps its
meaning, since both engines are leftmost-first backtracking matchers.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

from webrt.errors import TokenizerError

Ranges = list[tuple[int, int]]

# Unicode White_Space property: what Oniguruma's `\s` and Rust's `char::is_whitespace` match.
# (Python's `\s` / str.isspace additionally match U+001C..U+001F.)
WHITE_SPACE_CHARS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
WHITE_SPACE = frozenset(WHITE_SPACE_CHARS)

_MAX_CODE_POINT = 0x10FFFF
# Planes 4..13 hold no assigned code point in any Unicode version to date (up to 16.0): they are
# skipped by the category scan (treated as Cn) to keep start-up cheap on Pyodide.
_SCANNED_SPANS = ((0, 0x3FFFF), (0xE0000, _MAX_CODE_POINT))

_CATEGORY_ALIASES = {
    "letter": "L", "cased_letter": "LC", "uppercase_letter": "Lu", "lowercase_letter": "Ll",
    "titlecase_letter": "Lt", "modifier_letter": "Lm", "other_letter": "Lo",
    "mark": "M", "combining_mark": "M", "nonspacing_mark": "Mn", "spacing_mark": "Mc",
    "enclosing_mark": "Me", "number": "N", "decimal_number": "Nd", "digit": "Nd",
    "letter_number": "Nl", "other_number": "No", "punctuation": "P", "punct": "P",
    "connector_punctuation": "Pc", "dash_punctuation": "Pd", "open_punctuation": "Ps",
    "close_punctuation": "Pe", "initial_punctuation": "Pi", "final_punctuation": "Pf",
    "other_punctuation": "Po", "symbol": "S", "math_symbol": "Sm", "currency_symbol": "Sc",
    "modifier_symbol": "Sk", "other_symbol": "So", "separator": "Z", "space_separator": "Zs",
    "line_separator": "Zl", "paragraph_separator": "Zp", "other": "C", "control": "Cc",
    "cntrl": "Cc", "format": "Cf", "surrogate": "Cs", "private_use": "Co", "unassigned": "Cn",
    "any": "ANY",
}


@lru_cache(maxsize=1)
def _category_runs() -> dict[str, Ranges]:
    """Map each two-letter general category to its sorted code-point ranges (one scan, cached)."""
    runs: dict[str, Ranges] = {}
    category = unicodedata.category
    for first, last in _SCANNED_SPANS:
        start = first
        previous = category(chr(first))
        code = first
        for code, current in enumerate(map(category, map(chr, range(first, last + 1))), first):
            if current != previous:
                runs.setdefault(previous, []).append((start, code - 1))
                previous, start = current, code
        runs.setdefault(previous, []).append((start, code))
    runs.setdefault("Cn", []).append((0x40000, 0xDFFFF))
    runs["Cn"].sort()
    return runs


def _merge(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def complement(ranges: Ranges) -> Ranges:
    """Code points (0..U+10FFFF) not in `ranges`."""
    out: Ranges = []
    next_start = 0
    for start, end in _merge(ranges):
        if start > next_start:
            out.append((next_start, start - 1))
        next_start = end + 1
    if next_start <= _MAX_CODE_POINT:
        out.append((next_start, _MAX_CODE_POINT))
    return out


@cache
def category_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Ranges of a general category given as `L`, `Lu`, `Letter`, `LC`, ... (Oniguruma names)."""
    key = _CATEGORY_ALIASES.get(name.strip().lower().replace(" ", "_").replace("-", "_"), name)
    runs = _category_runs()
    if key == "ANY":
        return ((0, _MAX_CODE_POINT),)
    if key == "LC":
        wanted = ["Lu", "Ll", "Lt"]
    elif len(key) == 1 and key in "LMNPSZC":
        wanted = [cat for cat in runs if cat[0] == key]
    elif len(key) == 2 and key[0] in "LMNPSZC" and key[1].islower():
        wanted = [key]
    else:
        raise TokenizerError(
            f"regex property \\p{{{name}}} is not supported (only Unicode general categories are)"
        )
    return tuple(_merge([r for cat in wanted for r in runs.get(cat, [])]))


def parse_hex_ranges(table: str) -> Ranges:
    """Parse "300-36F 483 ..." (hex code points and ranges) into (start, end) pairs."""
    ranges: Ranges = []
    for item in table.split():
        start, _, end = item.partition("-")
        ranges.append((int(start, 16), int(end or start, 16)))
    return ranges


# Characters with the Alphabetic property (via Other_Alphabetic) outside L/M/Nl: circled and
# squared Latin letters; and the Join_Control characters. Both are in Unicode's `\\w`.
_EXTRA_WORD_RANGES: Ranges = [
    (0x200C, 0x200D), (0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189)
]


def word_ranges() -> Ranges:
    """Unicode `\\w`: Alphabetic, marks, decimal digits, connector punctuation, join controls."""
    return _merge(_union("L", "M", "Nd", "Nl", "Pc") + _EXTRA_WORD_RANGES)


def white_space_ranges() -> Ranges:
    return _merge([(ord(c), ord(c)) for c in WHITE_SPACE_CHARS])


def _union(*names: str) -> Ranges:
    return _merge([r for name in names for r in category_ranges(name)])


def _escape_code_point(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def ranges_to_class_body(ranges: Ranges) -> str:
    """The inside of a `re` character class (`[...]`) matching exactly `ranges`."""
    parts = []
    for start, end in ranges:
        if start == end:
            parts.append(_escape_code_point(start))
        else:
            parts.append(f"{_escape_code_point(start)}-{_escape_code_point(end)}")
    return "".join(parts)


def _shorthand_ranges(letter: str) -> Ranges:
    """Oniguruma's Unicode meaning of `\\s \\d \\w` (and their negations)."""
    lower = letter.lower()
    if lower == "s":
        ranges = white_space_ranges()
    elif lower == "d":
        ranges = list(category_ranges("Nd"))
    elif lower == "w":
        # Oniguruma's Unicode \w also takes a few Latin-1 No chars (e.g. ½ ³); not reproduced.
        ranges = word_ranges()
    elif lower == "h":  # Oniguruma: hexadecimal digit character
        ranges = [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)]
    else:
        raise AssertionError(letter)
    return complement(ranges) if letter.isupper() else ranges


def _parse_property(pattern: str, i: int) -> tuple[Ranges, int]:
    """Parse `\\p{..}`, `\\P{..}`, `\\p{^..}` or `\\pL` starting at pattern[i] == '\\\\'."""
    negate = pattern[i + 1] == "P"
    j = i + 2
    if j < len(pattern) and pattern[j] == "{":
        close = pattern.find("}", j)
        if close < 0:
            raise TokenizerError(f"malformed regex property in {pattern!r}")
        name = pattern[j + 1 : close]
        end = close + 1
    elif j < len(pattern):
        name = pattern[j]
        end = j + 1
    else:
        raise TokenizerError(f"malformed regex property in {pattern!r}")
    if name.startswith("^"):
        negate, name = not negate, name[1:]
    ranges = list(category_ranges(name))
    return (complement(ranges) if negate else ranges), end


_PASSTHROUGH_ESCAPES = set("tnrfvaxu0123456789.\\^$|?*+()[]{}-/ '\"#&~:<>=!,@%`;_")


def translate_pattern(pattern: str) -> str:
    """Rewrite an Oniguruma pattern from tokenizer.json into an equivalent Python `re` pattern."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise TokenizerError(f"regex ends with a lone backslash: {pattern!r}")
            escaped = pattern[i + 1]
            if escaped in "pP":
                ranges, i = _parse_property(pattern, i)
                body = ranges_to_class_body(ranges)
                out.append(body if in_class else f"[{body}]")
                continue
            if escaped in "sSdDwWhH":
                body = ranges_to_class_body(_shorthand_ranges(escaped))
                out.append(body if in_class else f"[{body}]")
                i += 2
                continue
            if escaped == "x" and i + 2 < n and pattern[i + 2] == "{":
                close = pattern.find("}", i)
                out.append(_escape_code_point(int(pattern[i + 3 : close], 16)))
                i = close + 1
                continue
            if escaped == "e":
                out.append("\\x1b")
            elif escaped == "z" and not in_class:
                out.append("\\Z")
            elif escaped == "Z" and not in_class:
                out.append("(?=\\n?\\Z)")
            elif escaped in "AbB" and not in_class:
                out.append("\\" + escaped)
            elif escaped in _PASSTHROUGH_ESCAPES:
                out.append("\\" + escaped)
            elif not escaped.isascii() or not escaped.isalnum():
                out.append(re.escape(escaped))
            else:
                raise TokenizerError(f"regex escape \\{escaped} is not supported (in {pattern!r})")
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
                out.append("]")
            elif char == "[":
                if pattern.startswith("[:", i):
                    raise TokenizerError(f"POSIX bracket classes are not supported: {pattern!r}")
                raise TokenizerError(f"nested character classes are not supported: {pattern!r}")
            elif char == "&" and pattern.startswith("&&", i):
                raise TokenizerError(f"class intersection (&&) is not supported: {pattern!r}")
            elif char in "-&~|" and i + 1 < n and pattern[i + 1] == char:
                out.append("\\" + char)  # doubled set operators warn in Python's re
            else:
                out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append("[")
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ']' is a literal
                out.append("\\]")
                i += 1
            continue
        if char == "(" and pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        out.append(char)
        i += 1
    if in_class:
        raise TokenizerError(f"unterminated character class in regex {pattern!r}")
    return "".join(out)


@lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an Oniguruma pattern from tokenizer.json (cached; raises TokenizerError)."""
    translated = translate_pattern(pattern)
    try:
        return re.compile(translated)
    except re.error as exc:
        raise TokenizerError(f"regex {pattern!r} is not supported: {exc}") from exc
