"""The base of every typed config section: unknown keys, NaN/inf and booleans for numbers are errors,
assignments are validated.

Kept apart from :mod:`uqpot.core.config_io` so that the modules that declare their own options (every UQ method
declares its ``uq`` options beside its code) need not import the config module, which builds the ``uq``
section from their registry.
"""

from __future__ import annotations

import typing

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

#: seeds are unsigned 32-bit integers everywhere (NumPy's legacy seeding and several libraries refuse others)
SEED_MAX = 2**32 - 1
def _seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"a seed is an integer in [0, 2**32), got {value}")
    return value


#: the type of every seed in a config and on the command line: an integer in [0, 2**32)
Seed = typing.Annotated[int, AfterValidator(_seed)]


def check_seed(value, where: str) -> int:
    """``value`` as a seed (an integer in [0, 2**32)), else ValueError naming ``where`` (a key or option)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: a seed is an integer in [0, 2**32), got {value!r}")
    try:
        return _seed(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def distinct_items(values: list) -> list:
    """A list setting that names things (methods, molecules, splits, seeds): not empty, each item once (an
    empty list would run nothing and report success; a repeated item would run twice or be ignored)."""
    if not values:
        raise ValueError("an empty list: give at least one item")
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    if repeated:
        raise ValueError(f"{', '.join(map(str, repeated))} given more than once (the items must be distinct)")
    return values


#: ``Distinct[T]``: a non-empty list of T with no item given twice (:func:`distinct_items`)
class _DistinctFactory:
    def __getitem__(self, item):
        return typing.Annotated[list[item], AfterValidator(distinct_items)]


Distinct = _DistinctFactory()


def _accepts_bool(annotation) -> bool:
    if annotation is bool or annotation is typing.Any:
        return True
    return any(_accepts_bool(a) for a in typing.get_args(annotation))


def _wants_number(annotation) -> bool:
    """Whether a field annotation takes an int or a float (where pydantic would turn true into 1)."""
    if annotation in (int, float):
        return True
    return any(_wants_number(a) for a in typing.get_args(annotation))


class Strict(BaseModel):
    """Base of every config section: unknown keys, NaN/inf and booleans for numbers are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v, info: ValidationInfo):
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if _wants_number(annotation) and not _accepts_bool(annotation):
                raise ValueError(f"expected a number, got the boolean {v!r}")
        return v


def option_list(values, option: str, item=str) -> list | None:
    """A comma-separated command-line list (``--seeds 0,1,2``, ``--splits 1,2``), given as the text or as its
    items, checked as a :data:`Distinct` list of ``item`` (a type such as :data:`Seed`); None when not given.
    A bad item is one line naming the option (ConfigError), never a traceback."""
    from pydantic import TypeAdapter, ValidationError

    from .errors import ConfigError

    if values is None or values == "" or values == []:
        return None
    items = [str(v).strip() for v in (values.split(",") if isinstance(values, str) else values)]
    shown = ",".join(items)
    try:
        return TypeAdapter(Distinct[item]).validate_python(items if item is str else
                                                            [_integer(v, option) for v in items])
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        value = f" (got {e['input']!r})" if not isinstance(e.get("input"), list) and "got" not in msg else ""
        raise ConfigError(None, f"{option} {shown!r}: {msg}{value}") from None
    except ValueError as exc:
        raise ConfigError(None, f"{option} {shown!r}: {exc}") from None


def _integer(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
