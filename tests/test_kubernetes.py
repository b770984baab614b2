"""deploy/kubernetes/: the manifests validate offline (kubernetes-validate, strict
schemas of the Kubernetes versions named below), hold what the deployment
needs, and embed exactly the configs `olactors cluster ...` writes, which the
real HAProxy and nginx accept.  What cannot be tested here (a cluster, the
images, DNS discovery at run time) is listed in deploy/kubernetes/README.md."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from olactors._config import build_config

from .cluster_tools import HAPROXY, NGINX, REPO

DEPLOY = REPO / "deploy" / "kubernetes"
#: The oldest and the newest Kubernetes minor versions the manifests are checked against.
VERSIONS = ("1.29.0", "1.37.0")


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {DEPLOY}")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    docs = documents()
    assert {doc["kind"] for _, doc in docs} >= {
        "Namespace",
        "DaemonSet",
        "Service",
        "Deployment",
        "ConfigMap",
        "PersistentVolumeClaim",
    }
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            raise AssertionError(f"{where}: {exc}") from None
        assert doc["metadata"].get("namespace", "olactors") == "olactors", name


def test_a_broken_manifest_is_refused() -> None:
    """The check can fail: a misspelt field and a wrong type are both caught."""
    daemonset = find("DaemonSet", "olactors-worker")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "soon"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_workers_are_a_privileged_daemonset_with_a_host_package_cache() -> None:
    daemonset = find("DaemonSet", "olactors-worker")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "httpGet" not in container["livenessProbe"]  # /healthz is 503 while draining
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    command = container["command"]
    worker_dir = command[command.index("--path") + 1]
    assert volumes["packages"]["hostPath"]["path"] == "/var/lib/olactors/packages"
    assert mounts["packages"] == f"{worker_dir}/packages"
    settings = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    config = build_config(None, settings)  # every key exists and has the right type
    assert config.registry.location.startswith("http://olactors-store.olactors.svc")
    assert config.server.host == "0.0.0.0"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.server.drain_s + config.server.shutdown_timeout_s
    assert mounts["state"] == config.state.dir
    assert Path(config.secrets.key_file).parent == Path(mounts["secrets-key"])
    service = find("Service", "olactors-workers")
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists the pods
    assert service["spec"]["selector"] == daemonset["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == config.server.port


def generator_command(manifest: str) -> list[str]:
    """The `olactors cluster ...` command a manifest's comment names."""
    text = (DEPLOY / manifest).read_text()
    match = re.search(r"^#\s+olactors (cluster .*)$", text, re.M)
    assert match, f"{manifest} names no generating command"
    return shlex.split(match.group(1))


def generate(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "olactors.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return done.stdout


def test_haproxy_config_is_the_generators_and_haproxy_accepts_it(tmp_path: Path) -> None:
    args = generator_command("haproxy.yaml")
    text = find("ConfigMap", "olactors-haproxy")["data"]["haproxy.cfg"]
    assert text == generate(args)
    assert "server-template w 1-32 olactors-workers.olactors.svc.cluster.local:5000" in text
    assert "balance hash path,field(3,/)" in text and "retry-on conn-failure 503" in text
    config = tmp_path / "haproxy.cfg"
    config.write_text(text.replace("/var/run/haproxy/admin.sock", str(tmp_path / "admin.sock")))
    checked = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    deployment = find("Deployment", "olactors-haproxy")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 8080
    assert deployment["spec"]["replicas"] == 1  # see the manifest's comment


def test_nginx_config_is_the_generators_and_nginx_accepts_it(tmp_path: Path) -> None:
    args = generator_command("code-store.yaml")
    text = find("ConfigMap", "olactors-store")["data"]["nginx.conf"]
    assert text == generate(args)
    assert "auth_basic_user_file /etc/olactors-store/htpasswd;" in text
    root = tmp_path / "store"
    root.mkdir()
    (tmp_path / "htpasswd").write_text("")
    here = (
        text.replace("/srv/olactors-store", str(root))
        .replace("/etc/olactors-store/htpasswd", str(tmp_path / "htpasswd"))
        .replace("user nginx;", "user root;")  # the image's user; this host has none
    )
    config = tmp_path / "nginx.conf"
    config.write_text(here)
    checked = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True)
    assert checked.returncode == 0, checked.stderr
    store = find("Deployment", "olactors-store")
    (container,) = store["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["store"] == "/srv/olactors-store"
    assert container["command"][:2] == ["nginx", "-c"]
