"""The Kubernetes base (k8s/) is valid, passes checkov, renders, and agrees with the code.

Agreement: every LEDGER_* variable is a setting, secrets reach the pods as files that the
settings read through the _FILE variants, probes are routes of the app, ports and selectors
match, the registry ConfigMap parses, the Jobs run commands the CLI has, the image's user is
the pods' user. Checkov runs from a virtual environment of its own (its pins would downgrade
packages of the dev environment; see pyproject.toml's `checkov` extra).
"""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ledger.app import create_app
from ledger.cli import parser
from ledger.core.purposes import BUILT_IN, parse_registry
from ledger.settings import FILE_VARIANTS, KNOWN, Settings, parse

ROOT = Path(__file__).parents[1]
K8S = ROOT / "k8s"
# Custom resources: kubernetes-validate has no schema for them (their operators' CRDs define them).
CUSTOM_KINDS = {("postgresql.cnpg.io/v1", "Cluster"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
# Oldest and newest Kubernetes versions the base is checked against.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# The only checkov checks a manifest may skip, each with its reason in the manifest.
ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_SECRET_6"}

Doc = dict[str, Any]


def documents() -> dict[str, Doc]:
    """Every manifest under k8s/ (not the kustomizations), by kind/name."""
    found = {}
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def workloads() -> dict[str, Doc]:
    """The pod templates of the Deployment and the Jobs."""
    return {key: doc["spec"]["template"] for key, doc in documents().items() if doc["kind"] in ("Deployment", "Job")}


def only_container(template: Doc) -> Doc:
    [container] = template["spec"]["containers"]
    return dict(container)


def container() -> Doc:
    return only_container(documents()["Deployment/consent-ledger"]["spec"]["template"])


def env_of(spec: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in spec["env"]}


def kustomize(directory: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl") or ("/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else None)
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubectl, or any kubectl >= 1.27 on PATH)")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- validity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_pass_strict_schema_validation(version: str) -> None:
    validated, custom = set(), set()
    for doc in documents().values():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            custom.add(doc["kind"])  # no schema for a custom resource: checked by the tests below instead
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any unknown or wrong field
        validated.add(doc["kind"])
    assert custom == {"Cluster", "ServiceMonitor"}
    expected = {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service"}
    expected |= {"PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Job"}
    assert validated == expected


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = documents()["Deployment/consent-ledger"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_base_renders_with_kustomize_into_one_namespace() -> None:
    rendered = kustomize(K8S)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    listed = {(doc["kind"], doc["metadata"]["name"]) for doc in documents().values()}
    # The Secret is a template created by hand; the ServiceMonitor is an optional component.
    assert kinds == listed - {("Secret", "consent-ledger"), ("ServiceMonitor", "consent-ledger")}
    assert {doc["metadata"].get("namespace") for doc in rendered if doc["kind"] != "Namespace"} == {"consent-ledger"}
    images = {
        c["image"]
        for doc in rendered
        if doc["kind"] in ("Deployment", "Job")
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/consent-ledger:0.1.0"}
    # Applied in order: no pod of the ledger runs before its NetworkPolicy exists.
    order = [doc["kind"] for doc in rendered]
    assert max(i for i, kind in enumerate(order) if kind == "NetworkPolicy") < order.index("Job")
    assert order.index("Job") < order.index("Deployment")  # the migrate Job first


def test_the_servicemonitor_component_adds_only_the_servicemonitor(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(K8S, overlay)}]\ncomponents: [{os.path.relpath(K8S / 'components/servicemonitor', overlay)}]\n"
    )
    with_component = {(d["kind"], d["metadata"]["name"]) for d in kustomize(overlay)}
    without = {(d["kind"], d["metadata"]["name"]) for d in kustomize(K8S)}
    assert with_component - without == {("ServiceMonitor", "consent-ledger")}


@pytest.fixture(scope="session")
def checkov() -> Path:
    """A checkov executable: $LEDGER_TEST_CHECKOV, or one installed into .venv/checkov (once; about
    2 minutes and 300 MB) from the exact version pinned by pyproject.toml's `checkov` extra."""
    given = os.environ.get("LEDGER_TEST_CHECKOV")
    if given:
        return Path(given)
    venv = ROOT / ".venv" / "checkov"
    executable = venv / "bin" / "checkov"
    [requirement] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["checkov"]
    marker = venv / "installed.txt"
    venv.parent.mkdir(exist_ok=True)
    with open(venv.parent / "checkov.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once must not build it twice
        if not executable.exists() or not marker.exists() or marker.read_text() != requirement:
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            result = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, f"installing {requirement} failed:\n{result.stderr[-3000:]}"
            marker.write_text(requirement)
    return executable


def test_checkov_finds_no_failed_check(checkov: Path) -> None:
    # --skip-download: no call to the vendor's platform (the checks are all local); JSON to count.
    result = subprocess.run(
        [str(checkov), "--directory", str(K8S), "--skip-download", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    frameworks = {report["check_type"]: report for report in reports}
    assert {"kubernetes", "dockerfile"} <= set(frameworks), result.stdout[:2000]
    failed = [
        f"{name}: {check['check_id']} {check['resource']} ({check['file_path']})"
        for name, report in frameworks.items()
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    assert result.returncode == 0, result.stderr[-2000:]
    for report in reports:
        assert report["summary"]["failed"] == 0
        assert report["summary"]["parsing_errors"] == 0


def test_every_checkov_skip_is_an_allowed_one_with_its_reason() -> None:
    skips = []
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for key, value in (doc.get("metadata", {}).get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    skips.append((check, reason.strip()))
        for line in path.read_text().splitlines():
            if match := re.search(r"checkov:skip=([A-Z0-9_]+):?(.*)", line):
                skips.append((match[1], match[2].strip()))
    assert skips
    for check, reason in skips:
        assert check in ALLOWED_SKIPS
        assert len(reason) > 20, f"{check} is skipped without saying why"


# --- agreement with the code ----------------------------------------------------------------------


def test_every_variable_is_a_setting_and_secrets_arrive_only_as_files() -> None:
    for key, template in workloads().items():
        spec = only_container(template)
        names = {e["name"] for e in spec["env"]}
        assert names <= KNOWN, key
        assert all("valueFrom" not in e for e in spec["env"]), f"{key}: a secret as an environment variable"
        assert "envFrom" not in spec, key
        assert not names & set(FILE_VARIANTS), f"{key}: set the _FILE variant, never the secret itself"
    assert {"LEDGER_DATABASE_URL_FILE", "LEDGER_ADMIN_TOKEN_FILE", "LEDGER_TOMBSTONE_KEY_FILE"} <= set(
        env_of(container())
    )


def mounted_files(template: Doc, tmp_path: Path) -> dict[str, Path]:
    """Each file the pod sees through a secret or ConfigMap volume -> a local copy with its
    content (the Secret template's, the ConfigMap's, or a URI like the one CloudNativePG writes)."""
    docs = documents()
    [cluster] = [d for d in docs.values() if d["kind"] == "Cluster"]
    operator_secret = f"{cluster['metadata']['name']}-app"
    namespace = cluster["metadata"]["namespace"]
    operator_keys = {"uri": f"postgresql://ledger:pw@{cluster['metadata']['name']}-rw.{namespace}:5432/ledger"}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    files: dict[str, Path] = {}
    for mount in only_container(template)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name == operator_secret:
                data = operator_keys
            elif name == "consent-ledger-signing-key":
                data = {"signing.key": "a signing key (its format is checked by `ledger serve`)"}
            else:
                data = docs[f"Secret/{name}"]["stringData"]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
        elif "configMap" in volume:
            data = docs[f"ConfigMap/{volume['configMap']['name']}"]["data"]
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        else:
            continue
        for item in items:
            assert item["key"] in data, f"volume {mount['name']} names a key its source lacks: {item['key']}"
            local = tmp_path / mount["name"] / item["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[item["key"]] + "\n")
            files[f"{mount['mountPath']}/{item['path']}"] = local
    return files


@pytest.mark.parametrize(
    "key", ["Deployment/consent-ledger", "Job/consent-ledger-migrate", "Job/consent-ledger-publish"]
)
def test_the_settings_accept_each_pods_environment_and_files(key: str, tmp_path: Path) -> None:
    template = workloads()[key]
    spec = only_container(template)
    files = mounted_files(template, tmp_path)
    env = env_of(spec)
    writable = {
        m["mountPath"]
        for m in spec["volumeMounts"]
        if "emptyDir" in {v["name"]: v for v in template["spec"]["volumes"]}[m["name"]]
    }
    assert env["LEDGER_DATA_DIR"] in writable, "the data directory must be a writable volume"
    assert "/tmp" in writable, "the root filesystem is read-only: /tmp must be a volume"
    local = dict(env, LEDGER_DATA_DIR=str(tmp_path / "data"))
    for name, value in env.items():
        if name.endswith("_FILE") or name in ("LEDGER_SIGNING_KEY", "LEDGER_PURPOSES"):
            assert value in files, f"{name}={value} is no file mounted into {key}"
            local[name] = str(files[value])
    settings = parse(local)
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql://")
    if key.startswith("Deployment"):
        assert settings.admin_token is not None
        assert settings.tombstone_key is not None
        assert settings.workers == int(env["LEDGER_WORKERS"])


def test_the_publish_job_uses_the_servers_origin_key_database_and_registry_file() -> None:
    server = env_of(container())
    publish = only_container(documents()["Job/consent-ledger-publish"]["spec"]["template"])
    publish_env = env_of(publish)
    for name in ("LEDGER_LOG_ORIGIN", "LEDGER_SIGNING_KEY", "LEDGER_DATABASE_URL_FILE"):
        assert publish_env[name] == server[name], name
    # The file it publishes is the one the servers seed a new log from.
    assert publish["command"] == ["ledger", "purposes", "publish", server["LEDGER_PURPOSES"]]
    migrate = only_container(documents()["Job/consent-ledger-migrate"]["spec"]["template"])
    assert env_of(migrate)["LEDGER_DATABASE_URL_FILE"] == server["LEDGER_DATABASE_URL_FILE"]


@pytest.mark.parametrize("job", ["consent-ledger-migrate", "consent-ledger-publish"])
def test_each_job_runs_a_command_the_cli_has(job: str) -> None:
    command = only_container(documents()[f"Job/{job}"]["spec"]["template"])["command"]
    assert command[0] == "ledger"
    parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or argument


def test_probes_and_port_match_the_service() -> None:
    spec = container()
    routes = {route.path for route in create_app(Settings(database_url="postgresql://unused")).routes}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["path"] in routes
    assert spec["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert spec["command"][:2] == ["ledger", "serve"]
    [port] = spec["ports"]
    assert spec["command"][spec["command"].index("--port") + 1] == str(port["containerPort"])
    assert "--host" in spec["command"]
    service = documents()["Service/consent-ledger"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {port["name"]}
    annotations = documents()["Deployment/consent-ledger"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_selectors_pick_the_servers_and_only_them() -> None:
    docs = documents()
    deployment = docs["Deployment/consent-ledger"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def picks(selector: Doc, pod: Doc) -> bool:
        return all(pod.get(k) == v for k, v in selector.items())

    assert picks(deployment["spec"]["selector"]["matchLabels"], labels)
    assert picks(docs["Service/consent-ledger"]["spec"]["selector"], labels)
    assert picks(docs["PodDisruptionBudget/consent-ledger"]["spec"]["selector"]["matchLabels"], labels)
    assert picks(docs["NetworkPolicy/consent-ledger"]["spec"]["podSelector"]["matchLabels"], labels)
    assert picks(
        docs["ServiceMonitor/consent-ledger"]["spec"]["selector"]["matchLabels"],
        docs["Service/consent-ledger"]["metadata"]["labels"],
    )
    assert docs["HorizontalPodAutoscaler/consent-ledger"]["spec"]["scaleTargetRef"]["name"] == "consent-ledger"
    for spread in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert picks(spread["labelSelector"]["matchLabels"], labels)
    jobs_policy = docs["NetworkPolicy/consent-ledger-jobs"]["spec"]["podSelector"]["matchExpressions"]
    for key in ("Job/consent-ledger-migrate", "Job/consent-ledger-publish"):
        job_labels = docs[key]["spec"]["template"]["metadata"]["labels"]
        assert not picks(docs["Service/consent-ledger"]["spec"]["selector"], job_labels), f"{key} would receive traffic"
        assert all(job_labels.get(e["key"]) in e["values"] for e in jobs_policy), f"{key} has no NetworkPolicy"


def test_the_network_policy_admits_the_service_port_and_reaches_the_database() -> None:
    docs = documents()
    policy = docs["NetworkPolicy/consent-ledger"]["spec"]
    [port] = container()["ports"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [port["name"]]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert {"consent-ledger/client": "true"} in [peer["podSelector"]["matchLabels"] for peer in sources]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(5432, "TCP"), (53, "UDP"), (53, "TCP"), (443, "TCP")}
    [cluster] = [d for d in docs.values() if d["kind"] == "Cluster"]
    database_peers = [peer for rule in policy["egress"] if rule["ports"][0]["port"] == 5432 for peer in rule["to"]]
    assert database_peers == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": cluster["metadata"]["name"]}}}]


def test_the_database_is_a_replicated_cloudnativepg_cluster_whose_secret_the_pods_read() -> None:
    docs = documents()
    cluster = docs["Cluster/consent-ledger-db"]["spec"]
    assert cluster["instances"] == 3
    assert cluster["postgresql"]["synchronous"]["number"] >= 1
    assert cluster["storage"]["size"]
    for key, template in workloads().items():
        secrets = {v["secret"]["secretName"] for v in template["spec"]["volumes"] if "secret" in v}
        assert "consent-ledger-db-app" in secrets, key


def test_the_pods_run_as_the_images_user_without_privileges() -> None:
    dockerfile = (K8S / "Dockerfile").read_text()
    [uid] = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)[-1:]
    assert "--create-home" in dockerfile
    assert re.search(r"LEDGER_DATA_DIR=/\S+", dockerfile)
    assert re.search(r"^HEALTHCHECK .*python.*/health/live", dockerfile, re.MULTILINE | re.DOTALL)
    assert "[embedded]" not in dockerfile  # no PostgreSQL binaries in the image
    for key, template in workloads().items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid), key
        assert pod["automountServiceAccountToken"] is False, key
        spec = only_container(template)
        assert spec["imagePullPolicy"] == "Always" or "@sha256:" in spec["image"], key
        context = spec["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, key
        assert context["allowPrivilegeEscalation"] is False, key
        assert context["capabilities"]["drop"] == ["ALL"], key
        assert {"cpu", "memory"} <= set(spec["resources"]["limits"]), key
    assert documents()["ServiceAccount/consent-ledger"]["automountServiceAccountToken"] is False


def test_the_configmap_registry_parses_and_keeps_the_built_in_purposes() -> None:
    registry = parse_registry(documents()["ConfigMap/consent-ledger-purposes"]["data"]["purposes.toml"].encode())
    assert set(registry.purposes) == set(BUILT_IN.purposes)
    assert registry.controller.name == "Kuku AI"
