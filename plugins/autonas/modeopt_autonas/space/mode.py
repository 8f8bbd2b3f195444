"""The NAS mode base every search-space mode builds on (``autonas``, ``fastnas``, third-party), and ``export_nas``."""

from __future__ import annotations

from typing import Any

from torch import nn

from modeopt_core import (
    ConfigError,
    ConvertError,
    Metadata,
    ModeConfig,
    ModeDescriptor,
    get_plugin_manager,
    unwrap_model,
)

from .analysis import AnalysisReport, analyze
from .analysis.examples import example_input
from .huggingface import describe_exported
from .rules import ExportConfig, NASRuleConfig, module_type_alias
from .search_space import SearchSpace
from .structure import SpaceStructure

__all__ = [
    "ExportNASMode",
    "NASModeBase",
    "get_search_space",
    "has_search_space",
]

_SPACE_ATTR = "_modeopt_search_space"

#: what may follow a NAS mode besides plugin modes listed through ``modeopt_autonas_next_modes``
_BASE_NEXT_MODES = frozenset({"export_nas"})
_NEXT_MODES_HINT = (
    "a plugin whose mode works on a search-space model adds it to this list through the "
    "modeopt_autonas_next_modes hook"
)


def has_search_space(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DP/DDP wrapper holds) carries a live (un-exported) search space."""
    return _SPACE_ATTR in unwrap_model(model).__dict__


def get_search_space(model: nn.Module) -> SearchSpace:
    """The search space of a model converted by a NAS mode (``autonas``/``fastnas``); DP/DDP are unwrapped."""
    space = unwrap_model(model).__dict__.get(_SPACE_ATTR)
    if space is None:
        raise ConvertError(
            "this model has no search space: apply a NAS mode first, e.g. "
            "modeopt_core.apply_mode(model, ['fastnas']) (or it was already exported)"
        )
    return space


def _set_space(model: nn.Module, space: SearchSpace | None) -> None:
    if space is None:
        model.__dict__.pop(_SPACE_ATTR, None)
    else:
        model.__dict__[_SPACE_ATTR] = space


def _class_name(model: nn.Module) -> str:
    # A root module that carries searchable tensors (ViT class token, pos-embed) is itself
    # class-swapped; the user's class is the one a fresh model has.
    cls = model.__dict__.get("_dyn_original_cls", type(model))
    return f"{cls.__module__}.{cls.__qualname__}"


def _rules_fn(config: NASRuleConfig) -> Any:
    aliases = set(config.rule_classes)

    def rules(name: str, module: nn.Module) -> dict[str, Any] | None:
        alias = module_type_alias(module)
        if alias is None or alias not in aliases:
            return None
        return config.rule_for(alias, name)

    return rules


def _no_searchable_dimension_message(space: SearchSpace, report: AnalysisReport | None = None) -> str:
    """The error text for a model without any searchable dimension: every reason, and what to do first."""
    reasons = [f"{k}: {v}" for k, v in space.frozen.items()]
    if report is not None:
        reasons = [f"{k or '(model)'} cannot be traced: {v}" for k, v in report.untraceable.items()] + reasons
    if not reasons:
        reasons = ["the model has no layer the search space understands (convs, Linear, norms, or a registered type)"]
    shown = "; ".join(reasons[:8]) + (f"; ... ({len(reasons) - 8} more)" if len(reasons) > 8 else "")
    return (
        f"the model has no searchable dimension under these rules. Frozen: {shown}. First steps: relax the "
        "rules (smaller channel_divisor, more ratios), list untraceable submodules in leaf_modules, or register "
        "a custom layer type (modeopt_autonas_register_layers); the full account is "
        "modeopt_autonas.analyze(model).report.format_table()"
    )


class NASModeBase(ModeDescriptor):
    """Shared convert/restore of the modes that turn a model into a search space.

    Subclasses give ``name`` and ``config_class`` (a :class:`~modeopt_autonas.space.NASRuleConfig`
    subclass) and may override :meth:`on_space_ready`. Metadata recorded: the model class, the
    search-space structure (so restore never re-runs the analysis) and the active subnet.
    """

    @property
    def accepted_mode_kwargs(self) -> frozenset[str] | None:
        return frozenset({"dummy_input"})  # the rest is in the config

    @property
    def next_modes(self) -> set[str] | None:
        # Open to third-party modes: plugins list theirs through ``modeopt_autonas_next_modes``.
        extra = get_plugin_manager().hook.modeopt_autonas_next_modes()
        return set(_BASE_NEXT_MODES).union(*map(set, extra))

    @property
    def next_modes_hint(self) -> str:
        return _NEXT_MODES_HINT

    @property
    def export_mode(self) -> str | None:
        return "export_nas"

    def build_space(self, model: nn.Module, config: NASRuleConfig, dummy_input: Any = None) -> SearchSpace:
        """Analyse ``model`` and convert it in place into a search space.

        Args:
            dummy_input: an input to trace ``model`` on (see :func:`~modeopt_autonas.space.analyze`);
                default: one built for models that describe their input (Hugging Face, timm and
                torchvision transformers), else a symbolic trace.
        """
        if has_search_space(model):
            raise ConvertError("the model already carries a search space; export it before converting again")
        # Trace in train mode: branches that only run in training (e.g. googlenet's aux heads) must be
        # bound too, or shrinking their producers would break training later. Flags are put back.
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.train(True)
            example = dummy_input if dummy_input is not None else example_input(model)
            result = analyze(
                model, leaf_modules=config.leaf_modules, frozen_modules=config.frozen_modules, example=example
            )
        finally:
            for m, flag in flags:
                m.training = flag
        space = SearchSpace.build(model, result.structure, _rules_fn(config), uniform=config.uniform)
        if not any(True for _ in space.named_hparams(True)):
            # apply_mode rolls the model back to its unconverted classes and attributes.
            raise ConvertError(_no_searchable_dimension_message(space, result.report))
        return space

    def convert(self, model: nn.Module, config: ModeConfig, **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        """``mode_kwargs``: ``dummy_input`` (optional), an input to trace the model on (not recorded)."""
        assert isinstance(config, NASRuleConfig)
        unknown = sorted(set(mode_kwargs) - {"dummy_input"})
        if unknown:
            raise ConfigError(
                f"mode {self.name!r} got unknown mode_kwargs {unknown}; it accepts only 'dummy_input' "
                "(an input to trace the model on)"
            )
        space = self.build_space(model, config, mode_kwargs.get("dummy_input"))
        space.sample("max")
        _set_space(model, space)
        self.on_space_ready(model, space, config)
        metadata: Metadata = {
            "model_class": _class_name(model),
            "structure": space.structure.to_json(),
            "subnet": space.config(),
        }
        return model, metadata

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        assert isinstance(config, NASRuleConfig)
        recorded = metadata.get("model_class")
        if recorded != _class_name(model):
            raise ConvertError(
                f"the checkpoint was made from a {recorded} but restore got a {_class_name(model)}; "
                "restore onto a fresh instance of the original model class"
            )
        structure = SpaceStructure.from_json(metadata["structure"])
        space = SearchSpace.restore(model, structure, _rules_fn(config), metadata["subnet"], uniform=config.uniform)
        _set_space(model, space)
        self.on_space_ready(model, space, config)
        return model

    def on_space_ready(self, model: nn.Module, space: SearchSpace, config: NASRuleConfig) -> None:
        """Hook for subclasses (e.g. attach a :class:`SubnetDriver`) after convert and restore."""

    def update_for_save(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        if has_search_space(model):
            metadata["subnet"] = get_search_space(model).settled().config()

    update_for_new_mode = update_for_save

    def summarize(self, config: dict[str, Any], metadata: Metadata) -> str | None:
        subnet, structure = metadata.get("subnet"), metadata.get("structure")
        if not isinstance(subnet, dict) or not isinstance(structure, dict):
            return None
        groups = structure.get("groups") or []
        frozen = sum(1 for g in groups if isinstance(g, dict) and not g.get("searchable", True))
        depth = len(structure.get("depth") or [])
        return (
            f"search space of {len(subnet)} searchable hparams: {len(groups)} channel groups ({frozen} frozen by "
            f"the analysis), {depth} elastic-depth sequentials"
        )


class ExportNASMode(ModeDescriptor):
    """``export_nas``: turn a search space into plain torch modules at the selected subnet."""

    @property
    def name(self) -> str:
        return "export_nas"

    @property
    def config_class(self) -> type[ModeConfig]:
        return ExportConfig

    @property
    def is_export_mode(self) -> bool:
        return True

    @property
    def accepted_mode_kwargs(self) -> frozenset[str] | None:
        return frozenset()

    def convert(self, model: nn.Module, config: ModeConfig, **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        space = get_search_space(model)
        space.detach_driver()  # first: it puts the user's selection back
        subnet = space.config()
        space.export()
        _set_space(model, None)
        describe_exported(model)  # Hugging Face models: layer indices and config follow the export
        return model, {"subnet": subnet}

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        assert isinstance(config, ExportConfig)
        space = get_search_space(model)
        space.select(metadata["subnet"], strict=config.strict)
        return self.convert(model, config)[0]

    def summarize(self, config: dict[str, Any], metadata: Metadata) -> str | None:
        subnet = metadata.get("subnet")
        return f"exported the selected subnet ({len(subnet)} hparams) to plain modules" if isinstance(subnet, dict) else None
