"""The NAS modes: a shared base that builds/restores the search space, ``autonas`` and ``export_nas``."""

from __future__ import annotations

from typing import Any

from torch import nn

from modeopt_core import ConvertError, Metadata, ModeConfig, ModeDescriptor, get_plugin_manager, unwrap_model

from .analysis import analyze
from .config import AutoNASConfig, ExportConfig, NASRuleConfig, SupernetRuleConfig, module_type_alias
from .layers import LAYERS
from .space import SearchSpace
from .structure import SpaceStructure

__all__ = ["AutoNASMode", "ExportNASMode", "NASModeBase", "get_search_space", "has_search_space"]

_SPACE_ATTR = "_modeopt_search_space"

#: modes that may follow a NAS mode besides its export (third-party: distillation, quantization...)
DEFAULT_NEXT_MODES = frozenset({"export_nas", "kd_loss", "quantize", "sparse_magnitude", "sparse_gpt"})


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
    return f"{type(model).__module__}.{type(model).__qualname__}"


#: built-in rule alias whose rules a plugin layer without its own rule field follows, by rule keys
_FALLBACK_ALIAS = {("channels_ratio", "channel_divisor"): "nn.Conv2d", ("features_ratio", "feature_divisor"): "nn.Linear"}


def _rules_fn(config: NASRuleConfig) -> Any:
    aliases = set(config.rule_classes)

    def rules(name: str, module: nn.Module) -> dict[str, Any] | None:
        alias = module_type_alias(module)
        if alias is not None and alias not in aliases:
            # a layer registered by a plugin (modeopt_autonas_register_layers): the config has no
            # field for it, so it follows the conv or linear rules (same rule keys), globs included
            dynamic = LAYERS.dynamic_class(module)
            alias = _FALLBACK_ALIAS.get(getattr(dynamic, "_dyn_rule_keys", ("", "")))
        if alias is None or alias not in aliases:
            return None
        return config.rule_for(alias, name)

    return rules


def _why_not_searchable(space: SearchSpace, result: Any, shown: int = 8) -> str:
    """Why nothing is searchable, never empty: untraceable modules (their tracing error) first, then the
    frozen hparams and the analysis' frozen items."""
    reasons = [f"{name or '(model)'} cannot be traced: {error}" for name, error in result.report.untraceable.items()]
    reasons += [f"{name}: {why}" for name, why in space.frozen.items()]
    reasons += [f"{item.module or '(model)'}: {item.reason}" for item in result.structure.frozen
                if not item.reason.startswith("untraceable module")]
    reasons = list(dict.fromkeys(reasons)) or ["no module has a type the rules cover (every rule is None?)"]
    more = f"; ... ({len(reasons) - shown} more)" if len(reasons) > shown else ""
    return "; ".join(reasons[:shown]) + more


class NASModeBase(ModeDescriptor):
    """Shared convert/restore of the modes that turn a model into a search space.

    Metadata recorded: the model class, the search-space structure (so restore never re-runs the
    analysis) and the active subnet.
    """

    @property
    def next_modes(self) -> set[str] | None:
        # Open to third-party modes: plugins list theirs through ``modeopt_autonas_next_modes``.
        extra = get_plugin_manager().hook.modeopt_autonas_next_modes()
        return set(DEFAULT_NEXT_MODES).union(*map(set, extra))

    @property
    def export_mode(self) -> str | None:
        return "export_nas"

    @property
    def accepted_mode_kwargs(self) -> frozenset[str] | None:
        return frozenset()  # everything is in the config

    def build_space(self, model: nn.Module, config: NASRuleConfig) -> SearchSpace:
        """Analyse ``model`` and convert it in place into a search space."""
        if has_search_space(model):
            raise ConvertError("the model already carries a search space; export it before converting again")
        # Trace in train mode: branches that only run in training (e.g. googlenet's aux heads) must be
        # bound too, or shrinking their producers would break training later. Flags are put back.
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.train(True)
            result = analyze(model, leaf_modules=config.leaf_modules, frozen_modules=config.frozen_modules)
        finally:
            for m, flag in flags:
                m.training = flag
        space = SearchSpace.build(model, result.structure, _rules_fn(config))
        if not any(True for _ in space.named_hparams(True)):
            # apply_mode rolls the model back to its unconverted classes and attributes.
            raise ConvertError(
                f"the model has no searchable dimension under these rules. Why: {_why_not_searchable(space, result)}. "
                "Relax the rules (smaller channel_divisor, more ratios) or see the analysis report "
                "(modeopt_autonas.analyze(model).report.format_table())"
            )
        return space

    def convert(self, model: nn.Module, config: ModeConfig, **mode_kwargs: Any) -> tuple[nn.Module, Metadata]:
        assert isinstance(config, NASRuleConfig)
        space = self.build_space(model, config)
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
        space = SearchSpace.restore(model, structure, _rules_fn(config), metadata["subnet"])
        _set_space(model, space)
        self.on_space_ready(model, space, config)
        return model

    def on_space_ready(self, model: nn.Module, space: SearchSpace, config: NASRuleConfig) -> None:
        """Hook for subclasses (e.g. install training-time sampling) after convert and restore."""

    def update_for_save(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        if has_search_space(model):
            metadata["subnet"] = get_search_space(model).config()

    update_for_new_mode = update_for_save


class AutoNASMode(NASModeBase):
    """``autonas``: a supernet over channel widths, kernel sizes and depth; evolutionary search."""

    @property
    def name(self) -> str:
        return "autonas"

    @property
    def config_class(self) -> type[ModeConfig]:
        return AutoNASConfig

    @property
    def search_algorithm(self) -> type:
        from .searchers import EvolveSearcher

        return EvolveSearcher

    def on_space_ready(self, model: nn.Module, space: SearchSpace, config: NASRuleConfig) -> None:
        from .training import install_supernet_sampling

        assert isinstance(config, SupernetRuleConfig)
        install_supernet_sampling(model, space, schedule=config.sampling, seed=config.seed)

    def update_for_save(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> None:
        # record the user's selection, not a subnet auto-sampled by the last training forward
        from .training import supernet_sampler

        sampler = supernet_sampler(model)
        if sampler is not None:
            sampler.settle()
        super().update_for_save(model, config, metadata)

    update_for_new_mode = update_for_save


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
        _uninstall_training_hooks(model)  # first: it puts the user's selection back
        subnet = space.config()
        space.export()
        _set_space(model, None)
        return model, {"subnet": subnet}

    def restore(self, model: nn.Module, config: ModeConfig, metadata: Metadata) -> nn.Module:
        assert isinstance(config, ExportConfig)
        space = get_search_space(model)
        space.select(metadata["subnet"], strict=config.strict)
        return self.convert(model, config)[0]


def _uninstall_training_hooks(model: nn.Module) -> None:
    from .training import uninstall_supernet_sampling

    uninstall_supernet_sampling(model)
