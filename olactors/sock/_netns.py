"""Network namespaces of sandboxes: one per function, made once and reused.

Every leaf joins the namespace of its *scope* (``SandboxMeta.network_scope``,
the function's name) and network mode: a fresh leaf when it is spawned, a
forked one right after the fork (its zygote, shared by many functions, is
handed the namespace's fd with the child's other fds and the child calls
``setns``).  A namespace is made the first time a scope needs it — loopback
up, and for ``egress`` a veth to the host (see :mod:`._egress`) — so its cost
is paid once per function, not per call (about a millisecond for ``none``,
tens of milliseconds for ``egress``: ``ip`` runs).  It lives until the scope is
forgotten (:meth:`NetworkNamespaces.forget`: the function actor stopped,
idle or shut down) *and* its last sandbox is released; the kernel frees it
once no process and no fd holds it, and an egress veth goes with it.  A leaf
without a scope (the package installer, tests) gets a namespace of its own,
released with it.  Zygotes live in one more namespace, empty, with no
loopback: package imports have no network.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field

import trio

from .. import native
from .._network import Network
from ._egress import Egress, Veth

log = logging.getLogger("olactors.sock.network")


@dataclass(eq=False)
class NetworkNamespace:
    """One sandbox's use of a namespace (``fd`` keeps it alive while held)."""

    key: tuple[str, Network]
    network: Network
    kept: bool
    fd: int = -1
    veth: Veth | None = None
    users: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    made_s: float = 0.0


class NetworkNamespaces:
    """The pool's network namespaces (one per scope and mode, plus the zygotes')."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.zygote_fd = native.new_network_namespace()
        self._spaces: dict[tuple[str, Network], NetworkNamespace] = {}
        self._private = itertools.count(1)
        #: Namespaces made, and the seconds making them took (for the figures).
        self.made = 0
        self.making_s = 0.0

    async def acquire(self, scope: str, network: Network) -> NetworkNamespace:
        """The namespace of ``scope`` (made now if it has none); release it with
        :meth:`release`.  An empty scope gets a namespace of its own."""
        key = (scope or f"\0private-{next(self._private)}", network)
        while True:
            space = self._spaces.get(key)
            if space is None:
                space = NetworkNamespace(key, network, kept=bool(scope))
                self._spaces[key] = space
                try:
                    await self._make(space)
                finally:
                    if space.fd < 0:
                        del self._spaces[key]
                    space.ready.set()
                break
            await space.ready.wait()
            if space.fd >= 0:
                break
        if scope:
            space.kept = True
        space.users += 1
        return space

    async def release(self, space: NetworkNamespace) -> None:
        """One sandbox no longer uses ``space``; destroyed when nothing keeps it."""
        space.users -= 1
        if space.users <= 0 and not space.kept:
            await self._destroy(space)

    async def forget(self, scope: str) -> None:
        """``scope``'s function stopped: its namespaces go with their last sandbox."""
        for space in [s for key, s in self._spaces.items() if key[0] == scope]:
            space.kept = False
            if space.users <= 0:
                await self._destroy(space)

    def scopes(self) -> list[tuple[str, str]]:
        """(scope, mode) of every namespace now held (private ones included)."""
        return [(key[0], key[1].value) for key in self._spaces]

    async def aclose(self) -> None:
        """Destroy every namespace and the worker's egress rules (worker shutdown)."""
        for space in list(self._spaces.values()):
            space.kept = False
            await self._destroy(space)
        if self.zygote_fd >= 0:
            os.close(self.zygote_fd)
            self.zygote_fd = -1
        await self.egress.aclose()

    # ------------------------------------------------------------- internals
    async def _make(self, space: NetworkNamespace) -> None:
        started = trio.current_time()
        # Loopback up (in the native layer: no process to start), so 127.0.0.1
        # works inside the function and only there.
        fd = await trio.to_thread.run_sync(native.new_network_namespace, True)
        if space.network is Network.EGRESS:
            try:
                space.veth = await self.egress.attach(fd)
            except BaseException:
                os.close(fd)
                raise
        space.fd = fd
        space.made_s = trio.current_time() - started
        self.made += 1
        self.making_s += space.made_s
        log.debug(
            "network namespace %s (%s) made in %.1f ms",
            space.key[0],
            space.network.value,
            space.made_s * 1e3,
        )

    async def _destroy(self, space: NetworkNamespace) -> None:
        if self._spaces.get(space.key) is space:
            del self._spaces[space.key]
        fd, space.fd = space.fd, -1
        if fd >= 0:
            os.close(fd)
        veth, space.veth = space.veth, None
        if veth is not None:
            with trio.CancelScope(shield=True):
                try:
                    await self.egress.detach(veth, missing_ok=True)
                except OSError as exc:
                    log.warning("deleting %s failed: %s", veth.name, exc)
