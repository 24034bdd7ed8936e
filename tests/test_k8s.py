"""The Kubernetes manifests agree with the code: settings, probes, port and the registry."""

from pathlib import Path

import yaml

from ledger.app import create_litestar
from ledger.core.purposes import BUILT_IN, parse_registry
from ledger.settings import KNOWN, Settings

K8S = Path(__file__).parents[1] / "k8s"


def documents() -> dict[str, dict]:  # type: ignore[type-arg]
    found = {}
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def container() -> dict:  # type: ignore[type-arg]
    [only] = documents()["Deployment/consent-ledger"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_every_variable_is_a_setting_and_the_secret_holds_only_settings() -> None:
    names = {e["name"] for e in container()["env"]}
    secret = documents()["Secret/consent-ledger"]["stringData"]
    assert names | set(secret) <= KNOWN
    assert "LEDGER_DATABASE_URL" in secret


def test_probes_and_port_match_the_service() -> None:
    spec = container()
    routes = {route.path for route in create_litestar(Settings(database_url="postgresql://unused")).routes}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["httpGet"]["path"] in routes
    assert spec["command"][:2] == ["ledger", "serve"]
    assert spec["command"][spec["command"].index("--port") + 1] == str(spec["ports"][0]["containerPort"])
    assert "--host" in spec["command"]


def test_the_configmap_registry_parses_and_keeps_the_built_in_purposes() -> None:
    registry = parse_registry(documents()["ConfigMap/consent-ledger-purposes"]["data"]["purposes.toml"].encode())
    assert set(registry.purposes) == set(BUILT_IN.purposes)
    assert registry.controller.name == "Kuku AI"
