"""Mode configs: strict pydantic models, and rule configs keyed by module type with glob overrides."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from .errors import ConfigError

__all__ = ["ModeConfig", "RuleConfig", "make_rule_config", "validate_config"]

_C = TypeVar("_C", bound="ModeConfig")


class ModeConfig(BaseModel):
    """Base of every mode config: unknown keys rejected, assignments validated, JSON-serialisable."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignments are validated like construction; a bad value is a ConfigError naming the field."""
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        try:
            super().__setattr__(name, value)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(type(self), err)) from None
        except ValueError as err:  # pydantic: an attribute that is no field
            raise ConfigError(f"invalid {type(self).__name__}: {_unknown_key(name, _accepted(type(self)))} "
                              f"({err})") from None

    def dump(self) -> dict[str, Any]:
        """The JSON-able form recorded in the model's state (keys are aliases)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema of this config (by alias)."""
        return cls.model_json_schema(by_alias=True)


def _accepted(cls: type[BaseModel]) -> list[str]:
    return sorted(f.alias or name for name, f in cls.model_fields.items())


def _unknown_key(key: object, accepted: list[str]) -> str:
    close = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.6)
    hint = f", did you mean {close[0]!r}?" if close else ";"
    return f"unknown key {str(key)[:80]!r}{hint} accepted keys are {accepted}"


def _accepted_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], str]:
    """The keys accepted where an unknown key was found, and what holds them (for the message)."""
    rules = getattr(cls, "rule_classes", {})
    if len(loc) == 3 and loc[0] in rules:  # (alias, glob pattern, key): a key of one rule
        return sorted(rules[loc[0]].model_fields), f" of a {loc[0]} rule"
    return _accepted(cls), ""


def _format_validation_error(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        field = cls.model_fields.get(str(loc[0])) if loc else None
        if field is not None and field.alias:  # assignments report field names: show the key the user writes
            loc = (field.alias, *loc[1:])
        path = ".".join(str(p) for p in loc) or "<config>"
        msg = item["msg"]
        if item["type"] in ("extra_forbidden", "no_such_attribute"):
            accepted, owner = _accepted_at(cls, loc)
            msg = _unknown_key(loc[-1], accepted).replace("accepted keys are", f"accepted keys{owner} are")
        elif item["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        else:
            got = repr(item.get("input"))
            msg = f"{msg} (got {got[:120] + '...' if len(got) > 120 else got})"
        lines.append(f"  {path}: {msg}")
    return f"invalid {cls.__name__}:\n" + "\n".join(lines)


def validate_config(config_class: type[_C], data: Any) -> _C:
    """Validate ``data`` (a dict, a config instance or None) into ``config_class``.

    Raises:
        ConfigError: naming each bad field path and what is accepted there.
    """
    if isinstance(data, config_class):
        return data.model_copy(deep=True)
    if data is None:
        data = {}
    if isinstance(data, BaseModel):
        data = data.model_dump(by_alias=True)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{config_class.__name__} expects a dict (or a {config_class.__name__}), got {type(data).__name__}"
        )
    try:
        return config_class.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(config_class, err)) from None


class RuleConfig(ModeConfig):
    """A config whose fields are per-module-type rules (``"nn.Conv2d": {...}``).

    Each field value is one of:
      - ``None``: the module type is disabled (its modules are frozen);
      - a plain rule dict (``{"channel_divisor": 8}``), which applies to every module (``"*"``);
      - a glob map ``{"*": {...}, "*.downsample.*": {"channel_divisor": 4}, "head.*": None}`` keyed by
        fnmatch patterns over qualified module names. Patterns apply in order; a later match overrides
        only the keys it sets; ``None`` disables, and a dict after a ``None`` starts afresh.

    Build subclasses with :func:`make_rule_config`, which declares one field per module-type alias
    and records the rule class of each alias in ``rule_classes``.
    """

    #: alias ("nn.Conv2d") -> the pydantic class of one rule
    rule_classes: ClassVar[dict[str, type[BaseModel]]] = {}

    def rule_for(self, alias: str, module_name: str) -> dict[str, Any] | None:
        """The resolved rule of one module (``None`` = disabled), applying glob overrides in order."""
        patterns = getattr(self, self._field_name(alias))
        rule_cls = self.rule_classes[alias]
        merged: dict[str, Any] | None = None
        matched = False
        for pattern, rule in patterns.items():
            if not fnmatch.fnmatchcase(module_name, pattern):
                continue
            matched = True
            if rule is None:
                merged = None
                continue
            merged = {**(merged or {}), **rule.model_dump(exclude_unset=True)}
        if not matched or merged is None:
            return None
        return rule_cls.model_validate(merged).model_dump()

    def aliases(self) -> list[str]:
        """The module-type keys this config has rules for."""
        return list(self.rule_classes)

    @classmethod
    def _field_name(cls, alias: str) -> str:
        for name, field in cls.model_fields.items():
            if (field.alias or name) == alias:
                return name
        raise KeyError(alias)

    def dump(self) -> dict[str, Any]:
        """Rules are dumped with only the keys the user set, so glob merging round-trips exactly."""
        out = super().dump()
        for name, field in type(self).model_fields.items():
            alias = field.alias or name
            if alias in self.rule_classes:
                value = getattr(self, name)
                out[alias] = {
                    pat: (None if rule is None else rule.model_dump(mode="json", exclude_unset=True))
                    for pat, rule in value.items()
                }
        return out


def _wrapper_for(rule_cls: type[BaseModel]) -> Any:
    def wrap(value: Any) -> Any:
        if value is None:
            return {"*": None}
        if isinstance(value, BaseModel):
            return {"*": value}
        if isinstance(value, Mapping):
            if not value:
                return {"*": {}}
            fields = sorted(rule_cls.model_fields)
            if all(isinstance(k, str) and k in fields for k in value):
                return {"*": dict(value)}
            if not all(v is None or isinstance(v, (Mapping, BaseModel)) for v in value.values()):
                # not a glob map (whose values are rules): a rule with a misspelled or unknown key
                unknown = [k for k in value if not (isinstance(k, str) and k in fields)]
                raise ValueError(_unknown_key(unknown[0], fields).replace("accepted keys are", "accepted keys of "
                                 "this rule are") + " (or, for glob overrides, map module-name patterns to rules)")
            return dict(value)
        return value  # pydantic reports the type error with the field path

    return wrap


def make_rule_config(
    name: str,
    rules: Mapping[str, tuple[type[BaseModel], Any]],
    *,
    base: type[RuleConfig] = RuleConfig,
    doc: str = "",
    module: str | None = None,
) -> type[RuleConfig]:
    """Create a :class:`RuleConfig` subclass with one rule field per module-type alias.

    Args:
        rules: alias (``"nn.Conv2d"``) -> (rule class, default rule in any accepted form).
    """
    fields: dict[str, Any] = {}
    for alias, (rule_cls, default) in rules.items():
        annotation = Annotated[dict[str, rule_cls | None], BeforeValidator(_wrapper_for(rule_cls))]  # type: ignore[valid-type]
        field_name = alias.lower().replace(".", "_")
        fields[field_name] = (
            annotation,
            Field(default=_wrapper_for(rule_cls)(default), alias=alias, validate_default=True),
        )
    cls = create_model(name, __base__=base, __doc__=doc or None, __module__=module or __name__, **fields)
    cls.rule_classes = {**base.rule_classes, **{alias: rc for alias, (rc, _) in rules.items()}}
    return cls
