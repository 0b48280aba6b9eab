"""The base of every typed config section: unknown keys, NaN/inf and booleans for numbers are errors,
assignments are validated.

Kept apart from :mod:`uqpot.config` so that the modules that declare their own options (every UQ method
declares its ``uq`` options beside its code) need not import the config module, which builds the ``uq``
section from their registry.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


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
