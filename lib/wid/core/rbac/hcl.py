"""Read RBAC HCL files into plain values, with line numbers (admin side only).

python-hcl2 8.x parses; its dict serializer drops line numbers (`with_meta` is not wired up in 8.x)
and lets a repeated attribute or object key silently overwrite the first. So this module walks the
raw parse tree (`hcl2.parses_to_tree`, whose node names are those of hcl2's grammar) itself,
accepts only literal values (quoted strings without interpolation, numbers, true/false, null,
lists, objects) and reports anything else with its line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hcl2
from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

MAX_DEPTH = 32
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


class HclError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class HclObject(dict[str, Any]):
    """An object literal; lines maps each key to the line it is written on."""

    lines: dict[str, int]


class HclList(list[Any]):
    """A list literal; lines holds the line of each element."""

    lines: list[int]


@dataclass
class Attribute:
    name: str
    value: Any
    line: int


@dataclass
class Block:
    kind: str
    labels: list[str]
    line: int
    attributes: dict[str, Attribute] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


def _line(node: Tree | Token, default: int) -> int:
    if isinstance(node, Token):
        return node.line or default
    return getattr(node.meta, "line", default)


def _trees(node: Tree) -> list[Tree]:
    return [child for child in node.children if isinstance(child, Tree) and child.data != "new_line_or_comment"]


def _syntax_error(exc: UnexpectedInput) -> HclError:
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    if isinstance(exc, UnexpectedCharacters):
        found = repr(exc.char)
    elif isinstance(exc, UnexpectedToken):
        found = "end of file" if exc.token.type == "$END" else repr(str(exc.token)[:40])
    else:
        found = "end of file"
    return HclError(line, f"HCL syntax error at column {column}: unexpected {found}")


class _Reader:
    def __init__(self, substitute: Callable[[str], str]) -> None:
        self.substitute = substitute

    def body(self, node: Tree, depth: int) -> tuple[dict[str, Attribute], list[Block]]:
        attributes: dict[str, Attribute] = {}
        blocks: list[Block] = []
        for item in _trees(node):
            line = _line(item, 0)
            if item.data == "attribute":
                name = self.name(item.children[0])
                if name in attributes:
                    raise HclError(line, f"{name} is already set on line {attributes[name].line}")
                attributes[name] = Attribute(name, self.value(item.children[2], depth + 1), line)
            else:
                blocks.append(self.block(item, depth + 1))
        return attributes, blocks

    def block(self, node: Tree, depth: int) -> Block:
        if depth > MAX_DEPTH:
            raise HclError(_line(node, 0), f"blocks are nested deeper than {MAX_DEPTH} levels")
        parts = _trees(node)
        kind, labels, body = self.name(parts[0]), parts[1:-1], parts[-1]
        block = Block(kind, [self.label(label) for label in labels], _line(node, 0))
        block.attributes, block.blocks = self.body(body, depth)
        return block

    def name(self, node: Tree) -> str:
        # identifier, keyword or literal_value: one token, used as a name
        return str(node.children[0])

    def label(self, node: Tree) -> str:
        return self.string(node) if node.data == "string" else self.name(node)

    def value(self, node: Tree, depth: int) -> Any:
        line = _line(node, 0)
        if depth > MAX_DEPTH:
            raise HclError(line, f"values are nested deeper than {MAX_DEPTH} levels")
        if node.data == "expr_term":
            inner = _trees(node)
            if len(inner) != 1 or isinstance(node.children[0], Token):
                raise HclError(line, "parentheses and expressions are not supported; write a literal value")
            node = inner[0]
        kind = node.data
        if kind == "string":
            return self.string(node)
        if kind in ("int_lit", "float_lit"):
            return self.number(str(node.children[0]), line)
        if kind == "unary_op" and str(node.children[0]) == "-":
            number = self.value(node.children[1], depth)
            if isinstance(number, int | float) and not isinstance(number, bool):
                return -number
        if kind == "literal_value":
            return {"true": True, "false": False, "null": None}[str(node.children[0])]
        if kind == "tuple":
            return self.tuple(node, depth)
        if kind == "object":
            return self.object(node, depth)
        if kind == "identifier":
            raise HclError(line, f'{node.children[0]} is not a value; quote strings, as in "{node.children[0]}"')
        if kind.startswith("heredoc"):
            raise HclError(line, "heredoc strings are not supported; use a quoted string")
        raise HclError(line, "only literal values are supported (strings, numbers, true/false, lists, objects)")

    def number(self, text: str, line: int) -> int | float:
        if "." in text or "e" in text.lower():
            return float(text)
        if len(text) > 30:
            raise HclError(line, f"number {text[:30]}... is too long")
        return int(text)

    def tuple(self, node: Tree, depth: int) -> HclList:
        result = HclList()
        result.lines = []
        for item in _trees(node):
            result.append(self.value(item, depth + 1))
            result.lines.append(_line(item, _line(node, 0)))
        return result

    def object(self, node: Tree, depth: int) -> HclObject:
        result = HclObject()
        result.lines = {}
        for elem in _trees(node):
            key_node, value_node = _trees(elem)
            line = _line(elem, _line(node, 0))
            key = self.key(key_node, line)
            if key in result:
                raise HclError(line, f"key {key!r} is already set on line {result.lines[key]}")
            result[key] = self.value(value_node, depth + 1)
            result.lines[key] = line
        return result

    def key(self, node: Tree, line: int) -> str:
        inner = node.children[0]
        if isinstance(inner, Tree) and inner.data == "expr_term" and len(inner.children) == 1:
            inner = inner.children[0]
        if isinstance(inner, Tree) and inner.data == "string":
            return self.string(inner)
        if isinstance(inner, Tree) and inner.data in ("identifier", "keyword", "literal_value"):
            return self.name(inner)
        raise HclError(line, "object keys must be names or quoted strings")

    def string(self, node: Tree) -> str:
        line = _line(node, 0)
        out: list[str] = []
        for part in _trees(node):
            piece = part.children[0]
            if not isinstance(piece, Token):
                raise HclError(line, "template interpolation is not supported; write $${ or %%{ for a literal")
            # STRING_CHARS, or hcl2's ESCAPED_INTERPOLATION / ESCAPED_DIRECTIVE, whose token for $${ or %%{ runs
            # on to the next "}" and so holds ordinary characters too: every piece is read by the same rules.
            out.append(_literal(str(piece), line))
        return self.substitute("".join(out))


def _literal(text: str, line: int) -> str:
    """The characters a piece of a quoted string stands for: escapes decoded, $${ and %%{ as ${ and %{."""
    if "\\" not in text and "{" not in text and '"' not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            decoded, width = _escape(text, i, line)
            out.append(decoded)
            i += width
        elif text.startswith(("$${", "%%{"), i):
            out.append(text[i + 1 : i + 3])
            i += 3
        elif text.startswith(("${", "%{"), i):
            raise HclError(line, "template interpolation is not supported; write $${ or %%{ for a literal")
        elif char == '"':
            # hcl2's $${ token ran past this string's closing quote, swallowing what followed it
            raise HclError(line, 'a string with $${ or %%{ in it must also hold the "}" that closes it')
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _escape(text: str, i: int, line: int) -> tuple[str, int]:
    """The escape at text[i] (a backslash): what it stands for and its length."""
    marker = text[i + 1]  # neither hcl2 token ends on a lone backslash (STRING_CHARS pairs it, $${...} ends in })
    if marker in _ESCAPES:
        return _ESCAPES[marker], 2
    width = {"u": 4, "U": 8}.get(marker, 0)
    digits = text[i + 2 : i + 2 + width]
    if width and len(digits) == width and set(digits) <= _HEX:
        code = int(digits, 16)
        if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code), 2 + width
    raise HclError(line, f"invalid escape \\{marker} in a string (a '*' cannot be escaped: it is always a glob)")


def read(text: str, substitute: Callable[[str], str]) -> list[Block]:
    """The top-level blocks of a file; HclError for anything that is not plain data."""
    try:
        tree = hcl2.parses_to_tree(text)
    except (UnexpectedCharacters, UnexpectedToken, UnexpectedEOF) as exc:
        raise _syntax_error(exc) from None
    except Exception as exc:  # the parser's other failures on hostile input must not escape as tracebacks
        raise HclError(0, f"HCL parse error: {type(exc).__name__}: {str(exc)[:200]}") from None
    attributes, blocks = _Reader(substitute).body(tree.children[0], 0)
    for attribute in attributes.values():
        raise HclError(attribute.line, f"top-level attribute {attribute.name} is not allowed; use blocks")
    return blocks
