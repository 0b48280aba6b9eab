"""The ``uq`` section of a config: one typed options model per method, chosen by ``method``.

Every UQ method declares its options beside its code (a :class:`UQOptions` subclass with
``method: Literal["<name>"]``) and registers them with the method (:func:`uqpot.uq.base.register_method`);
``none`` (a plain potential) is registered here.  The section is validated against the registry at the time
it is read, so a method registered later (a plug-in, a test) is accepted like the built-in ones: unknown
methods, unknown keys and options of another method are errors that name the key, e.g.
``uq.lam applies to evidential, not to 'ensemble'``.

:data:`UQSection` is the field type of a ``uq`` section (:class:`uqpot.fit.config.RunConfig`);
:data:`MethodOptions` that of a mapping of method name to its options (the active-learning loop and the
studies: ``uq: {ensemble: {members: 5}}``), :data:`MethodName` / :data:`UQMethodName` those of a method name
(with or without ``none``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, SerializeAsAny, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from ..core.schema import Strict

REDUCTIONS = ("mean", "max", "sum")


class UQOptions(Strict):
    """What every method's options share: its name and the per-atom → per-structure reduction of U."""

    method: str = "none"
    reduction: Literal["mean", "max", "sum"] = "mean"

    #: options that describe the network the method needs (e.g. an ensemble's ``members``), not arguments of
    #: the method's constructor
    potential_keys: ClassVar[frozenset] = frozenset()

    def method_options(self) -> dict:
        """The method's constructor arguments besides the potential and the reduction."""
        return self.model_dump(exclude={"method", "reduction", *self.potential_keys})


class NoneOptions(UQOptions):
    """``uq: {method: none}``: a plain potential (SI Eq. 1), no uncertainty."""

    method: Literal["none"] = "none"


#: method name -> its options model ("none" included)
OPTIONS: dict[str, type[UQOptions]] = {"none": NoneOptions}


def register_options(name: str, model: type[UQOptions]) -> None:
    default = model.model_fields["method"].default
    if default != name:
        raise ValueError(f"the options of UQ method {name!r} must declare method: Literal[{name!r}] = {name!r}")
    OPTIONS[name] = model


def _error(loc: tuple, kind: str, message: str, value):
    return ValidationError.from_exception_data("uq", [{"type": PydanticCustomError(kind, message), "loc": loc,
                                                       "input": value}])


def _check_name(name, allow_none: bool = True) -> str:
    if name not in OPTIONS or (name == "none" and not allow_none):
        known = sorted(m for m in OPTIONS if allow_none or m != "none")
        raise ValueError(f"unknown UQ method {name!r}; known: {', '.join(known)}")
    return name


def _foreign_keys(name: str, data: dict, loc: tuple = ()) -> None:
    """Options given for ``name`` that belong to other methods: one error naming the key and its owners."""
    own = set(OPTIONS[name].model_fields)
    for key in data:
        if key in own:
            continue
        owners = sorted(m for m, model in OPTIONS.items() if key in model.model_fields and m != name)
        if owners:
            raise _error(loc + (key,), "foreign_option", f"applies to {'/'.join(owners)}, not to '{name}'",
                         data[key])


def parse_uq(data) -> UQOptions:
    """The typed options of a ``uq`` mapping (``{"method": ..., **options}``); pydantic's ValidationError
    (with the key's location) when anything is wrong."""
    if isinstance(data, UQOptions):
        return data
    if not isinstance(data, dict):
        raise _error((), "dict_type", "a mapping of options with a 'method' key", data)
    name = data.get("method", "none")
    try:
        _check_name(name)
    except ValueError as exc:
        raise _error(("method",), "unknown_method", str(exc), name) from None
    _foreign_keys(name, data)
    return OPTIONS[name].model_validate(data)


def uq_options(method: str = "none", **options) -> UQOptions:
    """``uq_options("llpr", gram="energy")``: the typed options of a method, validated."""
    return parse_uq({"method": method, **options})


def parse_method_options(data) -> dict[str, dict]:
    """Validates ``{method: {option: value}}`` (each method's options without its name); keeps the plain
    mapping."""
    if not isinstance(data, dict):
        raise _error((), "dict_type", "a mapping of method name to its options", data)
    for name, opts in data.items():
        try:
            _check_name(name)
        except ValueError as exc:
            raise _error((name,), "unknown_method", str(exc), name) from None
        if not isinstance(opts, dict):
            raise _error((name,), "dict_type", "a mapping of options", opts)
        if "method" in opts and opts["method"] != name:
            raise _error((name, "method"), "method_mismatch", f"the options of '{name}' name another method",
                         opts["method"])
        _foreign_keys(name, opts, (name,))
        # errors located under the method's name (a dict's errors carry its key)
        TypeAdapter(dict[str, OPTIONS[name]]).validate_python({name: {**opts, "method": name}})
    return {name: dict(opts) for name, opts in data.items()}


def _validate_section(value, handler):
    return parse_uq(value)


#: the ``uq`` section of a run config: the options model of its method
UQSection = Annotated[SerializeAsAny[UQOptions], WrapValidator(_validate_section)]
#: ``{method: {options}}`` (loop and study configs)
MethodOptions = Annotated[dict, WrapValidator(lambda v, handler: parse_method_options(v))]
#: a registered method name, ``none`` included (the grid's plain potential)
MethodName = Annotated[str, AfterValidator(lambda v: _check_name(v, allow_none=True))]
#: a registered UQ method (``none`` excluded: a loop needs an uncertainty to attack)
UQMethodName = Annotated[str, AfterValidator(lambda v: _check_name(v, allow_none=False))]


def upgrade_uq_section(data: dict) -> dict:
    """A ``uq`` section as written before each method declared its own options (every option of every method
    in one flat mapping, those of other methods at their defaults) → the method's own keys; anything else
    unchanged.  Used where a stored ``config.yaml`` is read back (resume, ``uqpot wrap``)."""
    if not isinstance(data, dict) or data.get("method", "none") not in OPTIONS:
        return data
    own = OPTIONS[data.get("method", "none")].model_fields
    return {k: v for k, v in data.items() if k in own}
