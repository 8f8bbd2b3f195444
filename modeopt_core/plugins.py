"""The one place that owns the :class:`pluggy.PluginManager`: discovery, registration, failures.

Plugins are found through the entry-point group ``modeopt.plugins`` the first time modes are needed.
Environment variables (read at autoload time):

- ``MODEOPT_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry-point plugin (register plugins explicitly).
- ``MODEOPT_PLUGINS=autonas,fastnas``: load only the named entry points (or distributions).

A plugin that fails to import or to register is logged and recorded in :func:`plugin_failures`
with its distribution and error; the other plugins still load.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginInfo",
    "get_plugin_manager",
    "list_plugins",
    "plugin_failures",
    "register_plugin",
    "unregister_plugin",
]

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "modeopt.plugins"
_ENV_DISABLE = "MODEOPT_DISABLE_PLUGIN_AUTOLOAD"
_ENV_ONLY = "MODEOPT_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered."""

    name: str
    distribution: str
    version: str
    error: str


def _core_version() -> str:
    try:
        return md.version("modeopt-core")
    except md.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


class _BuiltinHooks:
    """Default implementations of the entry-point hooks: call the mode descriptor."""

    @hookspecs.hookimpl(trylast=True)
    def modeopt_convert(self, mode: Any, model: Any, config: Any, mode_kwargs: dict[str, Any]) -> Any:
        return mode.convert(model, config, **mode_kwargs)

    @hookspecs.hookimpl(trylast=True)
    def modeopt_restore(self, mode: Any, model: Any, config: Any, metadata: Any) -> Any:
        return mode.restore(model, config, metadata)

    @hookspecs.hookimpl(trylast=True)
    def modeopt_update_for_save(self, mode: Any, model: Any, config: Any, metadata: Any) -> bool:
        mode.update_for_save(model, config, metadata)
        return True

    @hookspecs.hookimpl(trylast=True)
    def modeopt_update_for_new_mode(self, mode: Any, model: Any, config: Any, metadata: Any) -> bool:
        mode.update_for_new_mode(model, config, metadata)
        return True


class _PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(_BuiltinHooks(), name="modeopt-core")
        self.info: dict[str, PluginInfo] = {"modeopt-core": PluginInfo("modeopt-core", "modeopt-core", _core_version())}
        self.failures: list[PluginFailure] = []
        self.autoloaded = False
        self.generation = 0  # bumped whenever the plugin set changes (the mode registry rebuilds)
        self.lock = threading.RLock()

    def autoload(self) -> None:
        with self.lock:
            if self.autoloaded:
                return
            self.autoloaded = True
            if os.environ.get(_ENV_DISABLE, "").strip().lower() in ("1", "true", "yes"):
                _log.debug("plugin autoload disabled by %s", _ENV_DISABLE)
                return
            only = {s.strip() for s in os.environ.get(_ENV_ONLY, "").split(",") if s.strip()}
            for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                dist = ep.dist.name if ep.dist is not None else "<unknown>"
                version = ep.dist.version if ep.dist is not None else "<unknown>"
                if only and ep.name not in only and dist not in only:
                    continue
                if self.pm.has_plugin(ep.name):
                    continue
                try:
                    plugin = ep.load()
                    self._register(plugin, ep.name, dist, version)
                except Exception as exc:  # a broken plugin must not take the others down
                    self.failures.append(PluginFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}"))
                    _log.warning("modeopt plugin %r from %s %s failed to load: %s", ep.name, dist, version, exc)

    def _register(self, plugin: Any, name: str, dist: str, version: str) -> None:
        self.pm.register(plugin, name=name)
        try:
            for impl in self.pm.hook.modeopt_add_hookspecs.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(pluginmanager=self.pm)
        except Exception:
            self.pm.unregister(plugin)
            raise
        self.info[name] = PluginInfo(name, dist, version)
        self.generation += 1


_HOST = _PluginHost()


def get_plugin_manager() -> pluggy.PluginManager:
    """The core's plugin manager, with entry-point plugins loaded."""
    _HOST.autoload()
    return _HOST.pm


def register_plugin(plugin: Any, name: str | None = None, *, distribution: str = "<unregistered>") -> str:
    """Register a plugin object (module, class or instance with hookimpls) explicitly.

    For tests and notebooks; installed plugins are found through entry points. Returns its name.
    """
    _HOST.autoload()
    with _HOST.lock:
        plugin_name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if _HOST.pm.has_plugin(plugin_name) or _HOST.pm.is_registered(plugin):
            raise PluginError(
                f"a plugin named {plugin_name!r} is already registered; unregister it first or pass another name"
            )
        _HOST._register(plugin, plugin_name, distribution, "")
        return plugin_name


def unregister_plugin(name: str) -> None:
    """Remove an explicitly or automatically registered plugin by name."""
    with _HOST.lock:
        if name == "modeopt-core" or not _HOST.pm.has_plugin(name):
            raise PluginError(f"no removable plugin named {name!r}; registered: {sorted(_HOST.info)}")
        _HOST.pm.unregister(name=name)
        _HOST.info.pop(name, None)
        _HOST.generation += 1


def list_plugins() -> list[PluginInfo]:
    """Every registered plugin with its distribution, version and implemented hooks."""
    _HOST.autoload()
    out = []
    for name in sorted(_HOST.info):
        plugin = _HOST.pm.get_plugin(name)
        if plugin is None:
            continue
        hooks = tuple(sorted(h.name for h in _HOST.pm.get_hookcallers(plugin) or []))
        info = _HOST.info[name]
        out.append(PluginInfo(info.name, info.distribution, info.version, hooks))
    return out


def plugin_failures() -> list[PluginFailure]:
    """Plugins that failed to load or register, with their errors."""
    _HOST.autoload()
    return list(_HOST.failures)


def _record_failure(name: str, error: BaseException) -> None:
    info = _HOST.info.get(name)
    dist, version = (info.distribution, info.version) if info else ("<unknown>", "")
    _HOST.failures.append(PluginFailure(name, dist, version, f"{type(error).__name__}: {error}"))
    _log.warning("modeopt plugin %r (%s %s) failed to register its modes: %s", name, dist, version, error)


def _plugin_info(name: str) -> PluginInfo | None:
    return _HOST.info.get(name)


def _generation() -> int:
    return _HOST.generation
