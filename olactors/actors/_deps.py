"""What every function and instance actor is wired to (built once by the worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .._config import Config
from .._metrics import Metrics
from .._secrets import GrantedSecrets
from .._shutdown import ShutdownDeadline
from ..sock import SandboxPool
from .import_cache import ImportCacheRef
from .mempool import MemPoolRef
from .package_puller import PackagePullerRef

if TYPE_CHECKING:
    from .code_puller import CodePullerRef


class SecretsSource(Protocol):
    """Where a function's granted secrets come from (the secret store)."""

    def cached(self, function: str, now: float) -> GrantedSecrets | None:
        """``function``'s secrets without I/O or await if they are known and
        younger than ``registry.cache_s`` at trio time ``now``; else None."""
        ...

    async def for_function(self, function: str) -> GrantedSecrets:
        """The secrets granted to ``function`` now (within ``registry.cache_s``)."""
        ...


@dataclass(frozen=True, slots=True)
class Deps:
    config: Config
    pool: SandboxPool
    mempool: MemPoolRef
    import_cache: ImportCacheRef | None  # None: import cache disabled, every sandbox fresh
    puller: CodePullerRef
    metrics: Metrics
    packages: PackagePullerRef
    #: The worker's shutdown deadline: instances stopping at shutdown get until then, no longer.
    shutdown: ShutdownDeadline = field(default_factory=ShutdownDeadline)
    #: The granted secrets of functions (None: no secret store, e.g. simulations).
    secrets: SecretsSource | None = None
