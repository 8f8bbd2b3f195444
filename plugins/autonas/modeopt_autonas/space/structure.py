"""The search-space structure: which channel dimensions of which modules shrink together.

This is plain data. The tied-channel analysis (``analysis``) produces it; the search-space
builder (``space``) consumes it together with per-module rules to create hparams and dynamic
modules. It is recorded verbatim in the mode metadata, so a checkpoint restores the exact same
space without re-running the analysis (whose heuristics may change between versions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Roles of a layer dimension that a binding can tie to channel groups.
#:  - ``"out"``: output channels/features (conv ``weight`` dim 0 / transposed conv dim 1, linear dim 0, bias).
#:  - ``"in"``: input channels/features (conv ``weight`` dim 1 / transposed conv dim 0, linear dim 1).
#:  - ``"features"``: the single channel dim of a norm layer (BN/IN ``num_features``, LayerNorm last
#:    dim, GroupNorm ``num_channels``); it is both consumed and produced.
#: A composite layer (attention) also has dims of its own, named by its dynamic class (``"qkv"``,
#: ``"heads"``, ``"key"``: identifiers). Besides these, a role ``"tensor:<name>"`` ties one tensor of any
#: module (a layer scale ``gamma``, a per-channel bias) to a group: the binding's ``tensors`` say which
#: dim of it is sliced; and a role ``"attr:<name>"`` makes an int attribute of any module (``num_heads``,
#: ``split_size``) follow the width of its segments.
ROLES = ("out", "in", "features")
TENSOR_ROLE_PREFIX = "tensor:"
ATTR_ROLE_PREFIX = "attr:"

STRUCTURE_VERSION = 3
#: versions this build reads (1: before tensor roles and extra tensors; 2: before a layer's own roles)
READABLE_VERSIONS = (1, 2, 3)


def is_role(role: str) -> bool:
    """Whether ``role`` is a layer role (a standard one or an identifier a composite layer names) or a
    well-formed tensor or attribute role."""
    return role.isidentifier() or any(
        role.startswith(prefix) and len(role) > len(prefix) for prefix in (TENSOR_ROLE_PREFIX, ATTR_ROLE_PREFIX)
    )


def is_follower(role: str) -> bool:
    """Whether ``role`` follows a group without constraining it (a tensor or an attribute role)."""
    return role.startswith((TENSOR_ROLE_PREFIX, ATTR_ROLE_PREFIX))


@dataclass(frozen=True)
class Segment:
    """A run of features in a module dimension that comes from one channel group.

    ``repeat`` > 1 means every channel of the group spans ``repeat`` consecutive features (a
    ``C x H x W`` feature map flattened into a ``Linear``: channel ``c`` owns features
    ``c*repeat ... c*repeat + repeat - 1``).
    """

    group: int
    repeat: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channel dimensions that must always have the same width and channel order."""

    id: int
    size: int  # original width
    searchable: bool = True
    reason: str = ""  # why it is frozen (empty when searchable)


@dataclass(frozen=True)
class Binding:
    """Ties one dimension of one module to channel groups.

    The dimension is the concatenation of ``segments`` in order (one segment unless the module
    consumes a ``torch.cat``); its width is ``sum(groups[s.group].size * s.repeat)``.
    """

    module: str  # qualified module name as in ``model.named_modules()``
    role: str  # one of ROLES, or "tensor:<name>"
    segments: tuple[Segment, ...]
    #: further ``(tensor name, dim)`` pairs of the module sliced with this role: per-channel tensors a
    #: layer's own forward combines with its output (``gain`` of a scaled weight-standardised conv), or,
    #: for a tensor role, the tensor itself
    tensors: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DepthSpec:
    """A container of blocks some of which may be dropped (elastic depth).

    ``skippable`` lists the child indices that can be removed (each is shape-preserving, e.g. a
    residual block). For an ``nn.Sequential`` (``blocks=False``) depth ``d`` keeps children
    ``0..d-1`` and is allowed when every dropped index is skippable. With ``blocks`` (a list of
    identical shape-preserving blocks: a transformer's layers, in an ``nn.Sequential`` or an
    ``nn.ModuleList``) any skippable block may be dropped on its own: each gets a ``keep`` hparam.
    """

    module: str
    skippable: tuple[int, ...]
    blocks: bool = False


@dataclass(frozen=True)
class FrozenItem:
    """Something the analysis could not make searchable, and why (for the report)."""

    module: str
    reason: str


@dataclass
class SpaceStructure:
    """Everything needed to rebuild a search space on a fresh model without re-analysis."""

    groups: list[ChannelGroup] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    depth: list[DepthSpec] = field(default_factory=list)
    frozen: list[FrozenItem] = field(default_factory=list)
    version: int = STRUCTURE_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists, not tuples)."""
        return {
            "version": self.version,
            "groups": [asdict(g) for g in self.groups],
            "bindings": [
                {
                    "module": b.module,
                    "role": b.role,
                    "segments": [[s.group, s.repeat] for s in b.segments],
                    **({"tensors": [[name, dim] for name, dim in b.tensors]} if b.tensors else {}),
                }
                for b in self.bindings
            ],
            "depth": [
                {"module": d.module, "skippable": list(d.skippable), **({"blocks": True} if d.blocks else {})}
                for d in self.depth
            ],
            "frozen": [asdict(f) for f in self.frozen],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpaceStructure:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on an unknown version or bad role."""
        version = int(data.get("version", -1))
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"search-space structure version {version} is not supported (this build reads versions "
                f"{list(READABLE_VERSIONS)}); upgrade modeopt-autonas to restore this checkpoint"
            )
        bindings = []
        for b in data["bindings"]:
            if not is_role(b["role"]):
                raise ValueError(
                    f"binding for {b['module']!r} has unknown role {b['role']!r}; expected one of {ROLES}, a "
                    f"layer's own role (an identifier) or '{TENSOR_ROLE_PREFIX}<name>'"
                )
            tensors = tuple((str(name), int(dim)) for name, dim in b.get("tensors", ()))
            bindings.append(
                Binding(b["module"], b["role"], tuple(Segment(int(g), int(r)) for g, r in b["segments"]), tensors)
            )
        return cls(
            groups=[ChannelGroup(**g) for g in data["groups"]],
            bindings=bindings,
            depth=[DepthSpec(d["module"], tuple(d["skippable"]), bool(d.get("blocks", False))) for d in data["depth"]],
            frozen=[FrozenItem(**f) for f in data["frozen"]],
        )

    def bindings_of(self, module: str) -> list[Binding]:
        """All bindings of one module."""
        return [b for b in self.bindings if b.module == module]
