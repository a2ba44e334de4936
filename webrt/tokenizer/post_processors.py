"""Post-processors of tokenizer.json (single sequences): add BOS/EOS/CLS/SEP around the ids."""

from __future__ import annotations

from typing import Any, Protocol

from webrt.errors import TokenizerError


class PostProcessor(Protocol):
    def process(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        """Ids of the whole encoded sequence."""
        ...

    def added_count(self) -> int:
        """How many ids `process` adds to a single sequence (used by truncation)."""
        ...


class TemplateProcessing:
    """`single` template: special tokens around sequence `$A`."""

    def __init__(self, before: list[int], after: list[int]) -> None:
        self.before = before
        self.after = after

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TemplateProcessing:
        specials = spec.get("special_tokens", {})
        before: list[int] = []
        after: list[int] = []
        seen_sequence = False
        for item in spec.get("single", []):
            if "Sequence" in item:
                if item["Sequence"].get("id", "A") != "A" or seen_sequence:
                    raise TokenizerError("TemplateProcessing single template must hold $A once")
                seen_sequence = True
            elif "SpecialToken" in item:
                name = item["SpecialToken"]["id"]
                if name not in specials:
                    raise TokenizerError(f"TemplateProcessing special token {name!r} is not defined")
                (after if seen_sequence else before).extend(int(i) for i in specials[name]["ids"])
            else:
                raise TokenizerError(f"TemplateProcessing piece {item!r} is not supported")
        return cls(before, after)

    def process(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        if not add_special_tokens:
            return ids
        return self.before + ids + self.after

    def added_count(self) -> int:
        return len(self.before) + len(self.after)


class NoAddedTokens:
    """ByteLevel post-processor: only trims offsets, ids are unchanged."""

    def process(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        return ids

    def added_count(self) -> int:
        return 0


class SequenceProcessor:
    def __init__(self, children: list[PostProcessor]) -> None:
        self.children = children

    def process(self, ids: list[int], add_special_tokens: bool) -> list[int]:
        for child in self.children:
            ids = child.process(ids, add_special_tokens)
        return ids

    def added_count(self) -> int:
        return sum(child.added_count() for child in self.children)


def post_processor_from_spec(spec: dict[str, Any] | None) -> PostProcessor | None:
    """Build the post-processor described by tokenizer.json's `post_processor` field."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "TemplateProcessing":
        return TemplateProcessing.from_spec(spec)
    if kind in ("BertProcessing", "RobertaProcessing"):
        # [CLS] $A [SEP] / <s> $A </s>: entries are [token, id]
        return TemplateProcessing([int(spec["cls"][1])], [int(spec["sep"][1])])
    if kind == "ByteLevel":
        return NoAddedTokens()
    if kind == "Sequence":
        children = [post_processor_from_spec(child) for child in spec["processors"]]
        return SequenceProcessor([c for c in children if c is not None])
    raise TokenizerError(f"post-processor {kind!r} is not supported")
