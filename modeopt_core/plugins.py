"""The one place that owns the :class:`pluggy.PluginManager`: discovery, registration, failures.

Plugins are found through the entry-point group ``modeopt.plugins`` the first time modes are needed.
Environment variables (read at autoload time):

- ``MODEOPT_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry-point plugin (register plugins explicitly).
- ``MODEOPT_PLUGINS=autonas,fastnas``: load only the named entry points (or distributions), plus the
  plugins they require (``modeopt_plugin_requires``). A name no installed plugin has is reported in
  :func:`plugin_failures` (and logged), not ignored.

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
    def modeopt_summarize_metadata(self, mode: Any, config: Any, metadata: Any) -> Any:
        return mode.summarize(config, metadata)

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
        self.loading: list[str] = []  # entry points being loaded (to report dependency cycles)

    def autoload(self) -> None:
        with self.lock:
            if self.autoloaded:
                return
            self.autoloaded = True
            if _autoload_disabled():
                _log.debug("plugin autoload disabled by %s", _ENV_DISABLE)
                return
            only = {s.strip() for s in os.environ.get(_ENV_ONLY, "").split(",") if s.strip()}
            points = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
            known = {ep.name for ep in points} | {_dist_name(ep) for ep in points}
            for name in sorted(only - known):
                self.failures.append(PluginFailure(
                    name, "<not installed>", "",
                    f"{_ENV_ONLY} names {name!r}, but no installed plugin has that entry-point or distribution "
                    f"name (installed: {sorted(ep.name for ep in points) or 'none'})",
                ))
                _log.warning("%s", self.failures[-1].error)
            for ep in points:
                if only and ep.name not in only and _dist_name(ep) not in only:
                    continue
                self._load_entry_point(ep)

    def _load_entry_point(self, ep: md.EntryPoint) -> bool:
        """Load and register one entry point (its required plugins first); False when it failed."""
        if self.pm.has_plugin(ep.name):
            return True
        if ep.name in self.loading:
            raise PluginError(f"plugins require each other in a cycle: {' -> '.join([*self.loading, ep.name])}")
        dist, version = _dist_name(ep), (ep.dist.version if ep.dist is not None else "<unknown>")
        self.loading.append(ep.name)
        try:
            plugin = ep.load()
            self._register(plugin, ep.name, dist, version)
            return True
        except Exception as exc:  # a broken plugin must not take the others down
            self.failures.append(PluginFailure(ep.name, dist, version, f"{type(exc).__name__}: {exc}"))
            _log.warning("modeopt plugin %r from %s %s failed to load: %s", ep.name, dist, version, exc)
            return False
        finally:
            self.loading.pop()

    def _register(self, plugin: Any, name: str, dist: str, version: str) -> None:
        self.pm.register(plugin, name=name)
        try:
            self._load_requirements(plugin, name)
            for impl in self.pm.hook.modeopt_add_hookspecs.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(pluginmanager=self.pm)
        except Exception:
            self.pm.unregister(plugin)
            raise
        self.info[name] = PluginInfo(name, dist, version)
        self.generation += 1

    def _load_requirements(self, plugin: Any, name: str) -> None:
        """Make sure the plugins ``plugin`` declares through ``modeopt_plugin_requires`` are registered."""
        required: list[str] = []
        for impl in self.pm.hook.modeopt_plugin_requires.get_hookimpls():
            if impl.plugin is plugin:
                result = impl.function()
                if not isinstance(result, (list, tuple)) or not all(isinstance(r, str) for r in result):
                    raise PluginError(f"plugin {name!r}: modeopt_plugin_requires must return a list of plugin names")
                required += result
        for need in required:
            if self.pm.has_plugin(need):
                continue
            points = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == need]
            if _autoload_disabled():
                raise PluginError(
                    f"plugin {name!r} requires plugin {need!r}, which is not registered; plugin autoload is off "
                    f"({_ENV_DISABLE}), so register it first: modeopt_core.register_plugin(<its module>, name={need!r})"
                )
            if not points:
                raise PluginError(
                    f"plugin {name!r} requires plugin {need!r}, but no installed distribution provides a {need!r} "
                    "entry point: install it, or register it first with modeopt_core.register_plugin"
                )
            if not self._load_entry_point(points[0]):
                failure = next(f for f in reversed(self.failures) if f.name == need)
                raise PluginError(
                    f"plugin {name!r} requires plugin {need!r} ({failure.distribution} {failure.version}), "
                    f"which failed to load: {failure.error}"
                )
            _log.info("loaded plugin %r because plugin %r requires it", need, name)


def _autoload_disabled() -> bool:
    return os.environ.get(_ENV_DISABLE, "").strip().lower() in ("1", "true", "yes")


def _dist_name(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "<unknown>"


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
        if _HOST.pm.is_registered(plugin):
            current = _HOST.pm.get_name(plugin)
            info = _HOST.info.get(current or "")
            source = f" (loaded from the entry point of {info.distribution} {info.version})".rstrip() if info else ""
            raise PluginError(
                f"this plugin object is already registered under the name {current!r}{source}; use it as it is, "
                f"or unregister_plugin({current!r}) first. In unit tests of an installed plugin, disable autoload "
                f"for the whole test run ({_ENV_DISABLE}=1) and register it explicitly"
            )
        if _HOST.pm.has_plugin(plugin_name):
            raise PluginError(
                f"a plugin named {plugin_name!r} is already registered ({_HOST.pm.get_plugin(plugin_name)!r}); "
                "unregister it first or pass another name"
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
