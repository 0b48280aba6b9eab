"""The base of every typed config section: unknown keys are errors, assignments are validated.

Kept apart from :mod:`uqpot.config` so that the modules that declare their own options (every UQ method
declares its ``uq`` options beside its code) need not import the config module, which builds the ``uq``
section from their registry.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
