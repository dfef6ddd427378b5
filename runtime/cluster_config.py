"""``cluster.yaml`` for ``nebula up``/``nebula down``: a tiny YAML subset and the checked settings.

The subset: one ``key: value`` per line at the left margin, values that are plain or quoted
scalars or ``[a, b]`` flow lists, lists written as indented ``- item`` lines under a ``key:``,
and ``#`` comments. Nested mappings, anchors and multi-line strings are refused with the line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(?:\s+(.*))?$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
KNOWN_KEYS = ("cluster_name", "head", "nodes", "port", "num_cpus", "python", "tmpdir",
              "ssh_user", "ssh_port", "ssh_key", "ssh_options", "no_tls")


@dataclass(frozen=True)
class ClusterConfig:
    """What ``nebula up`` starts where, and how it reaches the hosts."""

    cluster_name: str
    head: str
    nodes: tuple[str, ...] = ()
    port: int = 6380
    num_cpus: float | None = None
    python: str = "python3"
    tmpdir: str | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    ssh_options: tuple[str, ...] = field(default_factory=tuple)
    no_tls: bool = False  # the user accepts authenticated but unencrypted traffic between hosts

    def tmpdir_for(self, host: str) -> str | None:
        """The NEBULA_TMPDIR used on ``host`` (``{host}`` in ``tmpdir`` becomes its address)."""
        return self.tmpdir.replace("{host}", host) if self.tmpdir else None


def load_cluster_config(path: str) -> ClusterConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the cluster file {path}: {exc.strerror}") from None
    return cluster_config_from(parse_yaml_subset(text, path), path)


def cluster_config_from(data: dict, source: str) -> ClusterConfig:
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KNOWN_KEYS)}")
    config = ClusterConfig(
        cluster_name=_cluster_name(data, source), head=_text(data, "head", source, required=True),
        nodes=_list(data, "nodes", source), port=_port(data, "port", source) or 6380,
        num_cpus=_positive(data, "num_cpus", source), python=_text(data, "python", source) or "python3",
        tmpdir=_text(data, "tmpdir", source), ssh_user=_text(data, "ssh_user", source),
        ssh_port=_port(data, "ssh_port", source), ssh_key=_text(data, "ssh_key", source),
        ssh_options=_list(data, "ssh_options", source), no_tls=_flag(data, "no_tls", source))
    _check_hosts(config, source)
    return config


def _check_hosts(config: ClusterConfig, source: str) -> None:
    hosts = [config.head, *config.nodes]
    odd = [h for h in hosts if not h or h.startswith("-") or any(c.isspace() or c in "@/'\"" for c in h)]
    if odd:
        raise ValueError(f"{source}: {odd[0]!r} is not a host name or address (put the user in `ssh_user:`)")
    repeated = sorted({h for h in hosts if hosts.count(h) > 1})
    if repeated:
        raise ValueError(f"{source}: host(s) {', '.join(repeated)} listed more than once (head and nodes "
                         "together); `nebula up` starts one node agent per host")


def _cluster_name(data: dict, source: str) -> str:
    name = _text(data, "cluster_name", source, required=True)
    if not _NAME.match(name):
        raise ValueError(f"{source}: cluster_name {name!r} may only use letters, digits, '.', '_' and '-' "
                         "(it names local state files)")
    return name


def _flag(data: dict, key: str, source: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be true or false, got {value!r}")
    return value


def _text(data: dict, key: str, source: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"{source}: `{key}:` is required")
        return None
    if isinstance(value, (list, bool)):
        raise ValueError(f"{source}: `{key}` must be a single value, got {value!r}")
    return str(value)


def _list(data: dict, key: str, source: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if any(item is None or isinstance(item, (bool, list)) for item in items):
        raise ValueError(f"{source}: `{key}` must be a list of addresses/strings, got {value!r}")
    return tuple(str(item) for item in items)


def _port(data: dict, key: str, source: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{source}: `{key}` must be a TCP port number (1-65535), got {value!r}")
    return value


def _positive(data: dict, key: str, source: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{source}: `{key}` must be a positive number, got {value!r}")
    return value


def parse_yaml_subset(text: str, source: str = "cluster.yaml") -> dict:
    """``key: value`` lines, ``[a, b]`` and ``- item`` lists, ``#`` comments (see the module doc)."""
    data: dict = {}
    list_key = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        where = f"{source} line {number}"
        if not line.strip() or line.strip() == "---":
            continue
        if line.lstrip().startswith("-") and line.lstrip()[1:2] in ("", " "):
            _add_item(data, list_key, line.lstrip()[1:].strip(), where)
            continue
        if line[0].isspace():
            raise ValueError(f"{where}: unexpected indentation (nested mappings are not supported): {raw.strip()!r}")
        list_key = _add_key(data, line, where)
    return data


def _add_key(data: dict, line: str, where: str) -> str | None:
    match = _KEY_LINE.match(line)
    if not match:
        raise ValueError(f"{where}: expected `key: value`, got {line.strip()!r}")
    key, value = match.group(1), (match.group(2) or "").strip()
    if key in data:
        raise ValueError(f"{where}: `{key}` is given twice")
    data[key] = _value(value, where) if value else None
    return None if value else key


def _add_item(data: dict, list_key: str | None, item: str, where: str) -> None:
    if list_key is None:
        raise ValueError(f"{where}: a `- item` line must follow a `key:` line with no value")
    if data[list_key] is None:
        data[list_key] = []
    data[list_key].append(_scalar(item, where))


def _value(text: str, where: str):
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{where}: a `[` list must close on the same line")
        inner = text[1:-1].strip()
        return [_scalar(part.strip(), where) for part in inner.split(",")] if inner else []
    return _scalar(text, where)


def _scalar(text: str, where: str):
    if text[:1] in ("{", "&", "*", "|", ">", "!"):
        raise ValueError(f"{where}: {text!r}: only plain or quoted values and lists are supported")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return json.loads(text)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return _plain(text)


def _plain(text: str):
    lowered = text.lower()
    if lowered in ("", "null", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(text):
        return int(text)
    return float(text) if _FLOAT.match(text) else text


def _strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment (one at the start or after a space, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in ("'", '"') and (i == 0 or line[i - 1] in " \t:[,-"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line
