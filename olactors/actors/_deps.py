"""What every function and instance actor is wired to (built once by the worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._config import Config
from .._metrics import Metrics
from .._shutdown import ShutdownDeadline
from ..sock import SandboxPool
from .import_cache import ImportCacheRef
from .mempool import MemPoolRef
from .package_puller import PackagePullerRef

if TYPE_CHECKING:
    from .code_puller import CodePullerRef


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
