"""Reading untrusted data files: YAML/JSON with the limits of ``topologies.limits``.

Every scenario, topology, profile, model and hardware preset file is read
here, so each gets the same bounded parser and the same kind of message
(path, line, what is wrong).  ``topologies.io`` re-exports these names; they
live apart so that modules ``io`` depends on (the builders, the hardware
presets) can read files too without an import cycle.
"""
from __future__ import annotations

import json
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, SequenceNode
from yaml.resolver import Resolver

from .limits import MAX_ALIAS_NODES, MAX_ALIASES, MAX_DATA_VALUES, MAX_FILE_BYTES, MAX_NESTING_DEPTH
from .text import cut, format_bytes, short, short_name
from .model import TopologyError

def read_data_file(path, error: type[Exception] = TopologyError, *, int_keys_under: tuple[str, ...] = ()):
    """Parse a ``.yaml``/``.yml`` or ``.json`` file; problems raise ``error`` naming the path and line.

    YAML numbers like ``1e-6`` are read as floats (YAML 1.2), not strings.
    The file is untrusted (see ``topologies.limits``): it must be a regular
    file of at most ``MAX_FILE_BYTES``, UTF-8, nested at most
    ``MAX_NESTING_DEPTH`` levels, without recursive YAML aliases or aliases
    that expand past ``MAX_ALIAS_NODES`` values, and its mapping keys must be
    strings, except integers directly under the dotted paths in
    ``int_keys_under`` (a scenario's ``workload.ranks``).
    """
    path = Path(path)
    shown = shown_path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise error(f"{shown}: unsupported file type {short(suffix)}; use .yaml, .yml or .json")
    try:
        info = path.stat()
        # A FIFO or a device would block or never end; only regular files are data.
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{shown}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise error(f"{shown}: the file is {format_bytes(info.st_size)}, over the limit of "
                        f"{format_bytes(MAX_FILE_BYTES)} for a scenario, topology or profile file")
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{shown}: no such file") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path no file can have: "embedded null byte"
        raise error(f"{shown}: not a file name: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise error(f"{shown}: the file is over the limit of {format_bytes(MAX_FILE_BYTES)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(f"{shown}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} "
                    f"(offset {exc.start}) cannot be decoded") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise error(f"{shown}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            # The decoder recurses once per level; far past MAX_NESTING_DEPTH anyway.
            raise error(f"{shown}: invalid JSON: nested deeper than {MAX_NESTING_DEPTH} levels") from None
        except ValueError as exc:  # e.g. an integer of more digits than int() accepts
            raise error(f"{shown}: invalid JSON: {cut(str(exc))}") from None
    else:
        data = parse_yaml(text, where=shown, error=error)
    check_plain_data(data, shown, error=error, int_keys_under=int_keys_under)
    return data


def shown_path(path) -> str:
    """``path`` for a message: whole, unless a file's value made it absurdly long."""
    text = str(path)
    if not text.isprintable():  # a NUL or a newline from a file's value
        text = repr(text)[1:-1]
    return text if len(text) <= 300 else text[:150] + "..." + text[-147:]


def parse_yaml(text: str, *, where: str = "YAML", error: type[Exception] = ValueError):
    """Parse YAML ``text`` as ``read_data_file`` does (same floats, same limits); problems raise ``error``."""
    loader_class = _CLoader if _CLoader is not None else _Loader
    try:
        loader = loader_class(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if problem == "exceeded maximum nesting depth":  # libyaml's own cap (1000), met first in flow style
            problem = f"nested deeper than {MAX_NESTING_DEPTH} levels"
        raise error(f"{where}: invalid YAML{at}: {cut(problem)}") from None
    except (ValueError, OverflowError) as exc:
        # A scalar its tag cannot hold: an int of 5000 digits, a 2001-13-45 timestamp.
        raise error(f"{where}: invalid YAML: {cut(str(exc))}") from None


def check_plain_data(data, where: str, *, error: type[Exception] = TopologyError,
                     int_keys_under: tuple[str, ...] = ()) -> None:
    """Refuse what no scenario, topology or profile holds: mapping keys that are not
    strings (integers only directly under the dotted paths ``int_keys_under``),
    nesting deeper than ``MAX_NESTING_DEPTH``, more than ``MAX_DATA_VALUES`` values.

    Iterative, so a deep or self-containing structure built in Python is
    refused like a deep file, never a RecursionError.  A value's path (for the
    message) is rebuilt from parent links only when something is wrong.
    """
    if not isinstance(data, (Mapping, list, tuple)):
        return
    stack = [(data, None, None, 1)]  # (container, parent frame, key in parent, depth)
    values = 0
    while stack:
        frame = stack.pop()
        value, _, _, depth = frame
        if depth > MAX_NESTING_DEPTH:
            raise error(f"{where}{_data_path(frame)}: nested deeper than {MAX_NESTING_DEPTH} levels")
        values += len(value)
        if values > MAX_DATA_VALUES:
            raise error(f"{where}: more than {MAX_DATA_VALUES:,} values")
        if isinstance(value, Mapping):
            if not all(type(key) is str for key in value):
                _check_keys_are_strings(value, frame, where, error, int_keys_under)
            children = reversed(list(value.items()))  # so that the first problem in file order is found first
        else:
            children = reversed(list(enumerate(value)))
        for key, child in children:
            kind = type(child)
            if kind is dict or kind is list or (kind not in _SCALARS and isinstance(child, (Mapping, list, tuple))):
                stack.append((child, frame, key, depth + 1))


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _check_keys_are_strings(mapping, frame, where, error, int_keys_under) -> None:
    here = _data_path(frame)
    ints = here.removeprefix(": ") in int_keys_under
    for key in mapping:
        if isinstance(key, str) or (ints and isinstance(key, int) and not isinstance(key, bool)):
            continue
        also = " or an integer" if ints else ""
        raise error(f"{where}{here}: key {short(key)} must be a string{also}")


def _data_path(frame) -> str:
    """': workload.ranks[0][2]' for a frame of check_plain_data, '' for the root (to follow the file's name)."""
    parts = []
    while frame[1] is not None:
        _, parent, key, _ = frame
        if isinstance(parent[0], Mapping) and isinstance(key, str):
            part = key if key.isidentifier() and len(key) <= 40 else short(key, 40)
            parts.append(f".{part}")
        else:
            parts.append(f"[{short(key, 40)}]")
        frame = parent
    path = "".join(reversed(parts)).lstrip(".")
    if len(path) > 120:
        path = path[:57] + "..." + path[-60:]
    return f": {path}" if path else ""


class _Resolver(Resolver):
    """Reads floats as YAML 1.2 does: ``1e-6`` is a float (YAML 1.1 makes it a string)."""


_Resolver.yaml_implicit_resolvers = {k: list(v) for k, v in Resolver.yaml_implicit_resolvers.items()}
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _LimitedComposer(Composer):
    """PyYAML's composer with the limits of ``topologies.limits``.

    PyYAML composes an alias as the anchored node itself, so a 600-byte file
    of nested aliases ("billion laughs") stands for 10^9 values that every
    later walk over the data visits, and an alias inside its own anchor makes
    a cycle.  Here every node's expanded size (values, counting what aliases
    repeat) is known when it is composed; aliases may repeat at most
    ``MAX_ALIAS_NODES`` values in all, at most ``MAX_ALIASES`` times, and never
    refer to a node that contains them.  Composing recurses once per level,
    so nesting is capped at ``MAX_NESTING_DEPTH`` here, before the recursion
    limit.  Time and memory stay linear in the file's size.
    """

    def __init__(self):
        Composer.__init__(self)
        self._depth = 0
        self._aliases = 0
        self._alias_values = 0
        self._open_anchors: set = set()
        self._expanded: dict[int, int] = {}  # id(node) -> values it stands for

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                if event.anchor in self._open_anchors:
                    raise ComposerError(None, None, f"alias *{short_name(event.anchor)} is inside the node it "
                                        "refers to (a recursive alias)", event.start_mark)
                self._aliases += 1
                self._alias_values += self._expanded.get(id(node), 1)
                if self._aliases > MAX_ALIASES:
                    raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases", event.start_mark)
                if self._alias_values > MAX_ALIAS_NODES:
                    raise ComposerError(None, None, f"aliases repeat more than {MAX_ALIAS_NODES:,} values "
                                        "(an alias bomb?)", event.start_mark)
            return Composer.compose_node(self, parent, index)
        collection = isinstance(event, (SequenceStartEvent, MappingStartEvent))
        if collection:
            self._depth += 1
            if self._depth > MAX_NESTING_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_NESTING_DEPTH} levels", event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = Composer.compose_node(self, parent, index)
        finally:
            if collection:
                self._depth -= 1
            self._open_anchors.discard(anchor)
        expanded = self._expanded
        if isinstance(node, SequenceNode):
            size = 1 + sum(expanded.get(id(child), 1) for child in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(expanded.get(id(k), 1) + expanded.get(id(v), 1) for k, v in node.value)
        else:
            size = 1
        expanded[id(node)] = size
        return node


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _LimitedComposer, SafeConstructor,
              _Resolver):
    """Pure-Python safe loader with the limits and YAML 1.2 floats."""

    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _LimitedComposer.__init__(self)
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)


try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml
    _CLoader = None
else:

    class _CLoader(_LimitedComposer, CParser, SafeConstructor, _Resolver):
        """libyaml's scanner and parser (about 5x faster), composed by ``_LimitedComposer``.

        The composer comes first in the bases so that its ``get_single_node``
        (Python, with the limits) is used, not CParser's own in C.
        """

        def __init__(self, stream):
            CParser.__init__(self, stream)
            _LimitedComposer.__init__(self)
            SafeConstructor.__init__(self)
            _Resolver.__init__(self)
