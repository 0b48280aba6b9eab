"""YAML for config files, stricter than ``yaml.safe_load``.

``safe_load`` keeps the last of two equal keys and drops the first without a word (two ``train:`` sections:
the first one's settings vanish); here a duplicated key is an error naming both lines.  A binary or
non-UTF-8 file (a model file given as the config, say) is refused as such instead of surfacing as a
``UnicodeDecodeError``.  Tags stay those of the safe loader: no Python object is ever built.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ConfigError


class _DuplicateKey(yaml.YAMLError):
    pass


class StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicated keys in any mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let the base class report it
                break
            if first is not None:
                raise _DuplicateKey(f"duplicated key '{key}' (line {key_node.start_mark.line + 1}; first given on "
                                    f"line {first}): YAML would keep only the last one; merge them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)



def loads(text: str):
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path) -> dict:
    """The mapping in the YAML file ``path``; every problem is a :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found" if not path.exists() else "not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read the config ({exc.strerror})") from None
    if b"\0" in raw[:8192]:
        raise ConfigError(path, "not a YAML config: the file holds binary data")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not a YAML config: not UTF-8 text (byte {exc.start})") from None
    try:
        data = loads(text)
    except _DuplicateKey as exc:
        raise ConfigError(path, str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ConfigError(path, "config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(path, "a config must be a mapping of keys to values")
    return data
