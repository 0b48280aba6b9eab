"""Exceptions that carry where a problem is (file, frame, field) so the CLI can print one clear line."""

from __future__ import annotations

from pathlib import Path


class UqpotError(Exception):
    """Base class of errors that uqpot reports to users as one line (no traceback)."""


class DataError(UqpotError):
    """A problem in a structure file: names the file and, where known, the frame and the field."""

    def __init__(self, path, message: str, frame: int | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.frame = frame
        self.field = field
        self.message = message
        super().__init__(self.location() + message)

    def location(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.frame is not None:
            parts.append(f"frame {self.frame}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return (": ".join(parts) + ": ") if parts else ""


class DataErrors(DataError):
    """Several problems found while validating files; ``problems`` holds each one."""

    def __init__(self, problems: list[DataError]):
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(first.path, first.message + more, first.frame, first.field)


class ConfigError(UqpotError):
    def __init__(self, path, message: str):
        self.path = str(path) if path is not None else None
        super().__init__((f"{self.path}: " if self.path else "") + message)


class ModelFileError(UqpotError):
    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class TrainingError(UqpotError):
    """Training cannot go on (diverged, a checkpoint that does not fit); says what to change."""


class PredictionError(UqpotError):
    """A model's predictions are unusable (non-finite): nothing is reported or written as a result."""
