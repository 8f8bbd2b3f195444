"""The mode registry: every mode contributed by the registered plugins, looked up by name."""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass

from . import plugins
from .errors import ModeNotFoundError, ModeRegistrationError
from .mode import ModeDescriptor

__all__ = ["ModeRegistry", "get_mode", "list_modes", "mode_provider"]


@dataclass(frozen=True)
class _Entry:
    mode: ModeDescriptor
    plugin: str


class ModeRegistry:
    """Modes by name, rebuilt from the plugin manager whenever the set of plugins changes."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._generation = -1
        self._lock = threading.RLock()

    def _refresh(self) -> None:
        pm = plugins.get_plugin_manager()
        with self._lock:
            if self._generation == plugins._generation():
                return
            entries: dict[str, _Entry] = {}
            for impl in reversed(pm.hook.modeopt_register_modes.get_hookimpls()):
                # Called one plugin at a time so that one broken plugin cannot hide the others' modes.
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                found: list[ModeDescriptor] = []
                try:
                    impl.function(register=found.append)
                    for mode in found:
                        self._add(entries, mode, plugin_name)
                except ModeRegistrationError:
                    raise
                except Exception as exc:
                    plugins._record_failure(plugin_name, exc)
            self._entries = entries
            self._generation = plugins._generation()

    @staticmethod
    def _add(entries: dict[str, _Entry], mode: ModeDescriptor, plugin_name: str) -> None:
        if not isinstance(mode, ModeDescriptor):
            raise ModeRegistrationError(
                f"plugin {plugin_name!r} registered {mode!r}, which is not a ModeDescriptor instance"
            )
        name = mode.name
        if name in entries:
            other = entries[name].plugin
            raise ModeRegistrationError(
                f"mode {name!r} is registered twice: by plugin {other!r} ({_describe(other)}) and by plugin "
                f"{plugin_name!r} ({_describe(plugin_name)}); mode names are persisted in checkpoints, so "
                "uninstall or disable one of them (MODEOPT_PLUGINS=...)"
            )
        entries[name] = _Entry(mode, plugin_name)

    def get(self, name: str | ModeDescriptor) -> ModeDescriptor:
        """The mode named ``name`` (a descriptor is looked up by its name)."""
        self._refresh()
        key = name.name if isinstance(name, ModeDescriptor) else name
        entry = self._entries.get(key)
        if entry is None:
            available = sorted(self._entries)
            close = difflib.get_close_matches(str(key), available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModeNotFoundError(
                f"unknown mode {key!r}.{hint} Available modes: {available or 'none'}. "
                "Modes come from installed plugins (`modeopt plugins` lists them)." + _failure_note()
            )
        return entry.mode

    def __contains__(self, name: object) -> bool:
        self._refresh()
        return isinstance(name, str) and name in self._entries

    def names(self) -> list[str]:
        """All registered mode names, sorted."""
        self._refresh()
        return sorted(self._entries)

    def provider(self, name: str) -> tuple[str, str]:
        """(distribution, version) of the plugin that provides mode ``name``."""
        self._refresh()
        entry = self._entries.get(name)
        if entry is None:
            raise ModeNotFoundError(f"unknown mode {name!r}; available: {sorted(self._entries)}")
        info = plugins._plugin_info(entry.plugin)
        return (info.distribution, info.version) if info else ("<unregistered>", "")

    def plugin_of(self, name: str) -> str:
        """Name of the plugin that provides mode ``name``."""
        self._refresh()
        return self._entries[name].plugin


def _failure_note() -> str:
    failures = plugins.plugin_failures()
    if not failures:
        return ""
    listed = "; ".join(f"{f.name!r} ({f.distribution} {f.version}): {f.error}".replace(" )", ")") for f in failures)
    return f" Installed plugins that failed to load (one of them may provide it): {listed}"


def _describe(plugin_name: str) -> str:
    info = plugins._plugin_info(plugin_name)
    return f"{info.distribution} {info.version}".strip() if info else "unknown distribution"


_REGISTRY = ModeRegistry()


def get_mode(name: str | ModeDescriptor) -> ModeDescriptor:
    """Look up a mode by name in the global registry."""
    return _REGISTRY.get(name)


def list_modes() -> list[str]:
    """Names of all available modes."""
    return _REGISTRY.names()


def mode_provider(name: str) -> tuple[str, str]:
    """(distribution, version) of the plugin that provided mode ``name``."""
    return _REGISTRY.provider(name)
