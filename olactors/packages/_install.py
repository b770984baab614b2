"""What the installer sandbox runs, and how its answer is read (no I/O except
:func:`pip_tool_dir`).

One pinned distribution per installer sandbox: ``pip install --no-deps
--only-binary=:all: --target=/host/site -r /host/req.txt`` (with
``--require-hashes`` when the pin has a hash), pip's own package mounted
read-only, and the worker's local ``find_links`` directories mounted
read-only so an offline index works inside the sandbox too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .._errors import PackageInstallFailed
from ..sock._api import InvocationResult, PackageMount
from ._index import TRANSPORT_VARIABLES, IndexOptions
from ._lock import Pin
from ._resolve import pip_tail

INSTALLER_ENTRY = "_installer:f"
PIP_TARGET = "/packages/.pip"
LINKS_TARGET = "/packages/.links"
CERTS_TARGET = "/packages/.certs"
_CERT_FILES = ("PIP_CERT", "PIP_CLIENT_CERT")
# What the installer keeps of the host's environment: pip's transport settings
# (as for resolution) and the standard proxy variables; nothing changes *what*
# is installed.
_TRANSPORT = (
    *TRANSPORT_VARIABLES,
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def pip_tool_dir(store_root: Path) -> Path:
    """A copy of this interpreter's pip, made once per worker dir and pip
    version (the installer sandbox never sees the host's site-packages)."""
    import pip

    source = Path(pip.__file__).resolve().parent
    tool = store_root / ".tools" / f"pip-{pip.__version__}"
    if not (tool / "pip" / "__init__.py").is_file():
        temp = tool.with_name(f".{tool.name}-{secrets.token_hex(4)}")
        temp.mkdir(parents=True)
        try:
            shutil.copytree(source, temp / "pip", symlinks=True)
            shutil.rmtree(tool, ignore_errors=True)
            os.rename(temp, tool)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return tool


#: Variables naming a proxy (a URL, or host:port).
_PROXIES = ("PIP_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def via_gateway(url: str, gateway: str | None) -> str:
    """``url`` as the installer reaches it: a host on this machine's loopback
    (``localhost``, 127.0.0.0/8, ``::1``) is, from inside an egress sandbox,
    the egress ``gateway`` address (whose port must be in
    ``sandbox.egress_allow_host``, and the service listen there too).  Other
    URLs, and every URL when ``gateway`` is None, are returned as they are.
    A proxy given as ``host:port`` (no scheme) keeps that form."""
    if gateway is None:
        return url
    bare = "://" not in url
    parts = urlsplit(f"http://{url}" if bare else url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number: pip will say so
        return url
    if host is None or not _is_loopback(host):
        return url
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + gateway + (f":{port}" if port else "")
    moved = urlunsplit(parts._replace(netloc=netloc))
    return moved[len("http://") :] if bare else moved


def sandboxed_index(
    index: IndexOptions, gateway: str | None = None
) -> tuple[IndexOptions, tuple[PackageMount, ...]]:
    """``index`` as seen from inside the installer: each local ``find_links``
    directory (a path or ``file://`` URL) is mounted read-only and named by
    its path inside the sandbox; index and link URLs on this machine's
    loopback name the egress ``gateway`` instead (see :func:`via_gateway`),
    which pip then trusts over plain HTTP as it trusts localhost."""
    mounts: list[PackageMount] = []
    links = []
    urls = [index.index_url, *index.extra_index_urls, *index.find_links]
    # pip reaches localhost over plain HTTP; the same service at the gateway too.
    plain_local = any(
        url.startswith("http://") and via_gateway(url, gateway) != url for url in urls
    )
    for link in index.find_links:
        path = unquote(urlsplit(link).path) if link.startswith("file://") else link
        if "://" in path or not os.path.isabs(path):
            links.append(via_gateway(link, gateway))
            continue
        target = f"{LINKS_TARGET}/{len(mounts)}"
        mounts.append(PackageMount(path, target, on_path=False))
        links.append(target)
    index = replace(
        index,
        index_url=via_gateway(index.index_url, gateway),
        extra_index_urls=tuple(via_gateway(url, gateway) for url in index.extra_index_urls),
        find_links=tuple(links),
        trusted_hosts=(gateway,) if plain_local and gateway is not None else (),
    )
    return index, tuple(mounts)


def pip_install_args(pin: Pin, index: IndexOptions) -> list[str]:
    args = [
        "install",
        "--no-deps",
        "--only-binary=:all:",
        "--target=/host/site",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        "--no-warn-script-location",
        *index.pip_args(),
        "--requirement=/host/req.txt",
    ]
    if pin.sha256:
        args.append("--require-hashes")
    return args


def installer_environment(
    host: Mapping[str, str], gateway: str | None = None
) -> tuple[dict[str, str], tuple[PackageMount, ...]]:
    """pip's environment in the installer: no configuration file, only the
    host's transport settings; a CA bundle or client certificate the host
    names (``PIP_CERT``, ``PIP_CLIENT_CERT``) is mounted read-only and named
    by its path inside the sandbox; a proxy on this machine's loopback is
    named by the egress ``gateway`` address (see :func:`via_gateway`).
    Returns the environment and those mounts."""
    env = {key: value for key, value in host.items() if key in _TRANSPORT}
    for key in _PROXIES:
        if env.get(key):
            env[key] = via_gateway(env[key], gateway)
    mounts = []
    for key in _CERT_FILES:
        path = env.pop(key, None)
        if path and os.path.isfile(path):
            target = f"{CERTS_TARGET}/{key}"
            mounts.append(PackageMount(os.path.realpath(path), target, on_path=False))
            env[key] = target
    env["PIP_CONFIG_FILE"] = "/dev/null"
    return env, tuple(mounts)


def read_installer_answer(pin: Pin, result: InvocationResult) -> None:
    """Raise :class:`PackageInstallFailed` unless pip reported success."""
    try:
        answer = json.loads(result.body)
    except ValueError:
        answer = None
    if result.status != 200 or not isinstance(answer, dict):
        detail = result.body.decode("utf-8", "replace")[-2000:]
        raise install_failed(pin, f"the installer failed (HTTP {result.status})", detail, 500)
    if answer.get("returncode") != 0:
        raise install_failed(
            pin, "pip could not install it", pip_tail(str(answer.get("output", "")))
        )


def install_failed(pin: Pin, what: str, tail: str = "", status: int = 424) -> PackageInstallFailed:
    message = f"installing {pin.name}=={pin.version} failed: {what}"
    if tail:
        message += f"\n{tail}"
    return PackageInstallFailed(message, pin.name, pin.version, tail, status)
