"""Reading and checking config files: YAML to a typed section, errors that name the key and the file.

Unknown keys are errors; every run writes its resolved config beside its outputs.  The sections themselves
are declared where they are used (data settings in :mod:`uqpot.data.config`, backbone options beside each
backbone, :mod:`uqpot.train.config`, the run config in :mod:`uqpot.fit.config`); this module only reads,
validates and writes them.

Relative paths in a config are taken relative to the current working directory (where ``uqpot`` runs).

Strict where YAML and pydantic are lenient, because each leniency once let a wrong run through: a key given
twice is an error (YAML keeps the last silently), a boolean is not a number (``epochs: true`` would be 1
epoch), NaN and infinity are not numbers either (``lr: .inf`` passed ``lr > 0``), and options that cannot
be used together (index files and split sizes, one structure file and separate train/val/test files) are
refused instead of one silently winning.
"""

from __future__ import annotations

import re

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .provenance import write_text
from .strict_yaml import read_yaml_mapping


#: pydantic's names of the branches of a union in an error's location (``literal['a','b']``, ``float``,
#: ``dict[str,...]``, a class name): internal, never shown to a user
_BRANCH = re.compile(r"^(?:[A-Z]\w*|(?:literal|dict|list|tuple|set|function-\w+|str|int|float|bool|none|nullable|"
                     r"lax-or-strict|json-or-python|chain|is-instance)(?:\[.*\])?)$")


def _user_errors(errors: list[dict]) -> list[dict]:
    """pydantic's errors with the union branches taken out of their locations, and one error per key of a
    union: the one that went deepest into the value (``sampler.ensemble``: the bad method's sampler), else the
    branches' messages that are not only about the value's type (a name not among the choices, rather than
    "not a dictionary"), joined; where every branch fails on the type alone, the first speaks for all."""
    cleaned, unions = [], set()
    for err in errors:
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and _BRANCH.match(x)))
        if len(loc) != len(err["loc"]):
            unions.add(len(cleaned))
        cleaned.append({**err, "loc": loc})
    keep: list[dict] = []
    for k, err in enumerate(cleaned):
        if k in unions:
            others = [cleaned[j] for j in unions if j != k]
            if any(len(o["loc"]) > len(err["loc"]) and o["loc"][:len(err["loc"])] == err["loc"] for o in others):
                continue  # another branch got further into the value: its error is the one that matters
            if err["type"].endswith("_type") and any(o["loc"] == err["loc"] and not o["type"].endswith("_type")
                                                     for o in others):
                continue
            earlier = next((o for o in keep if o["loc"] == err["loc"] and o.get("union")), None)
            if earlier is not None:
                if not err["type"].endswith("_type"):
                    msg = err["msg"].removeprefix("Value error, ")
                    earlier["msg"] += "; or " + msg[:1].lower() + msg[1:]
                continue
            err = {**err, "union": True}
        keep.append(err)
    return keep


def _format_validation_error(exc: ValidationError, prefix: str = "", sources: dict | None = None) -> tuple[str, bool]:
    """(message, whether any problem is in the file rather than in a command-line option); ``sources``
    maps dotted keys set on the command line to their option (``{"train.epochs": "--epochs"}``)."""
    parts, in_file = [], False
    for err in _user_errors(exc.errors()):
        dotted = ".".join(str(x) for x in err["loc"])
        loc = ".".join([prefix] * bool(prefix) + [dotted]) or "(top level)"
        option = (sources or {}).get(dotted)
        in_file |= option is None
        name = f"{option} ({loc})" if option else f"'{loc}'"
        got = f" (got {err.get('input')!r})"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {name}")
        elif err["type"] == "foreign_option":  # an option of another UQ method
            parts.append(f"{name} {err['msg']}")
        elif err["type"] == "missing":
            parts.append(f"missing key {name}")
        elif err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            if isinstance(err.get("input"), dict):  # a section-level check: its message names the keys
                parts.append(msg)
            else:  # the value once: the message may quote it already (a string, or "got ...")
                value = err.get("input")
                quoted = repr(value) in msg and (isinstance(value, str) or "got" in msg)
                parts.append(f"{name}: {msg}{'' if quoted else got}")
        else:
            parts.append(f"{name}: {err['msg']}{got}")
    return "; ".join(parts), in_file


def load_yaml(path) -> dict:
    """A config file as a mapping; duplicated keys, binary content and non-mappings are ConfigErrors."""
    return read_yaml_mapping(path)


def parse(model: type[BaseModel], data: dict, path=None, prefix: str = "", sources: dict | None = None):
    """``model`` from ``data``; errors name the keys (under ``prefix``, the section of a larger file) and
    the file ``path`` (or the command-line options in ``sources`` that set them)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, in_file = _format_validation_error(exc, prefix, sources)
        raise ConfigError(path if in_file else None, message) from None


def apply_overrides(data: dict, overrides: dict | None) -> dict:
    """Sets ``{"train.epochs": 3, ...}`` (dotted keys) in the nested mapping ``data``, in place."""
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(None, f"cannot set '{dotted}': '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_config(path, model: type[BaseModel], overrides: dict | None = None,
                sources: dict | None = None):
    """``model`` from the YAML file ``path`` with dotted ``overrides``; ``sources`` names the command-line
    option of each override, so that an error in one is blamed on the option and not on the file."""
    return parse(model, apply_overrides(load_yaml(path), overrides), path, sources=sources)


def dump_config(cfg: BaseModel, path) -> None:
    write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
