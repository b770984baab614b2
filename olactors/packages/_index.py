"""Where pip may look for distributions: the worker's ``packages:`` config section (pure)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .._config import Config
from .._errors import ConfigError

# Host settings about *how* to reach the network that pip may keep (a proxy,
# a CA bundle, a client certificate, a timeout); every other PIP_* variable of
# the caller is dropped, so no host configuration changes *what* is resolved.
TRANSPORT_VARIABLES = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT")


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """The package indexes pip uses.

    ``offline``: no index at all (``--no-index``), only ``find_links``; the
    index URLs are then ignored. ``find_links`` entries are URLs or absolute
    directory paths. ``trusted_hosts``: hosts pip may reach over plain HTTP
    (pip trusts localhost itself; the installer's view of it is another address).
    """

    index_url: str = "https://pypi.org/simple"
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    offline: bool = False
    trusted_hosts: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Config, base_dir: Path | None = None) -> IndexOptions:
        """From ``config.packages``; relative ``find_links`` paths are made
        absolute against ``base_dir`` (the worker dir; default: the current dir).

        Raises :class:`ConfigError` for an empty ``index_url`` when not offline.
        """
        section = config.packages
        base = (base_dir or Path.cwd()).resolve()
        find_links = tuple(
            link if "://" in link else str(base / link) for link in section.find_links
        )
        if not section.offline and not section.index_url.strip():
            raise ConfigError("packages.index_url is empty (set packages.offline: true instead)")
        for key, values in (
            ("extra_index_urls", section.extra_index_urls),
            ("find_links", section.find_links),
        ):
            if any(not value.strip() for value in values):
                raise ConfigError(f"packages.{key} holds an empty string")
        return cls(
            index_url=section.index_url,
            extra_index_urls=tuple(section.extra_index_urls),
            find_links=find_links,
            offline=section.offline,
        )

    @property
    def needs_network(self) -> bool:
        """Whether pip reaches anything over the network: an index, or a
        ``find_links`` URL (local directories need none)."""
        return not self.offline or any(
            "://" in link and not link.startswith("file://") for link in self.find_links
        )

    def pip_args(self) -> list[str]:
        """pip's index options; each value is attached with ``=`` so it can
        never be read as another option."""
        if self.offline:
            args = ["--no-index"]
        else:
            args = [f"--index-url={self.index_url}"]
            args += [f"--extra-index-url={url}" for url in self.extra_index_urls]
        args += [f"--find-links={link}" for link in self.find_links]
        args += [f"--trusted-host={host}" for host in self.trusted_hosts]
        return args


def pip_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a pip subprocess: ``base`` (default: this process's)
    without the caller's pip configuration: every ``PIP_*`` variable is dropped
    except the transport ones, and ``PIP_CONFIG_FILE=/dev/null`` makes pip read
    no configuration file."""
    source = os.environ if base is None else base
    env = {
        key: value
        for key, value in source.items()
        if not key.startswith("PIP_") or key in TRANSPORT_VARIABLES
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    return env
