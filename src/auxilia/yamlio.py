"""The one YAML loader auxilia parses with: PyYAML's safe loader, refusing duplicate keys.

PyYAML keeps the last of two equal keys in one mapping without a word, so a config that sets
``lr`` twice trains with whichever comes last. :class:`UniqueKeyLoader` refuses that at any
depth, naming the key and both places. Merge keys (``<<: *base``) still work: a key of the
mapping itself may override one it merges, and maps merged together may share keys; only two
keys written in the same mapping are refused.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode

__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "load", "load_value", "problem"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A key written twice in one mapping. A :class:`yaml.YAMLError`, so that readers that
    treat unparsable YAML leniently treat this the same way; its message is one line."""

    def __init__(self, key: Any, first: Mark, second: Mark) -> None:
        super().__init__("while constructing a mapping", first, f"found duplicate key {key!r}",
                         second)
        self.key = key
        self.message = (f"key {key!r} appears twice in one mapping ({_places(first, second)}); "
                        "keep one")

    def __str__(self) -> str:
        return self.message


def _places(first: Mark, second: Mark) -> str:
    """``line 3 and line 7``, or ``line 1, columns 2 and 9`` for a one-line (flow) mapping."""
    if first.line == second.line:
        return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
    return f"line {first.line + 1} and line {second.line + 1}"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key written twice
    (:class:`DuplicateKeyError`)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def construct_mapping(self, node: Node, deep: bool = False) -> Any:
        """Refuse duplicate keys, then construct as the safe loader does."""
        if isinstance(node, MappingNode):
            self._check_unique(node)
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node: MappingNode) -> None:
        """Check ``node`` before merging: a map merged into another is flattened (its merged
        keys put in front of its own) before it may be constructed itself, and after that its
        own keys can no longer be told from the merged ones."""
        self._check_unique(node)
        super().flatten_mapping(node)

    def _check_unique(self, node: MappingNode) -> None:
        """Raise :class:`DuplicateKeyError` if two keys written in ``node`` are equal.

        Only scalar keys are compared: a sequence or mapping as a key is unhashable, which the
        safe loader refuses itself. Merge keys (``<<``) may repeat.
        """
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        seen: dict[Any, Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark


def load(text: str) -> Any:
    """Parse one YAML document with :class:`UniqueKeyLoader`.

    Raises:
        yaml.YAMLError: not valid YAML, or a duplicate key (:class:`DuplicateKeyError`).
        RecursionError: nested too deeply.
    """
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no Python objects


def load_value(text: str, where: str, error: type[Exception] = ValueError) -> Any:
    """Parse a YAML value given on the command line (e.g. a ``--methods`` item).

    Args:
        text: the YAML text.
        where: what the text is, for the message (``--methods item '{...}'``).
        error: the exception raised for a duplicate key.

    Raises:
        error: ``WHERE: key 'k' appears twice in one mapping (...); keep one``.
        yaml.YAMLError: any other YAML problem.
    """
    try:
        return load(text)
    except DuplicateKeyError as err:
        raise error(f"{where}: {err}") from None


def problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    if isinstance(err, DuplicateKeyError):
        return err.message
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({err.context})" if err.context else ""
        return f"{err.problem}{context}{where}"
    return " ".join(str(err).split())
