"""The Kubernetes and KServe manifests render offline, validate strictly, and agree with each
other and with the server they run (probe paths, metric names, settings)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from modelhost.settings import Settings

from .manifests import KUBERNETES, render, validate


@pytest.fixture(scope="module")
def base() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in render("base")}


@pytest.fixture(scope="module")
def kserve() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in render("kserve")}


def test_every_object_validates_strictly(base, kserve):
    judged = {doc["kind"]: validate(doc) for doc in [*base.values(), *kserve.values()]}
    assert judged == {
        "ServiceAccount": "kubernetes", "ConfigMap": "kubernetes", "Secret": "kubernetes",
        "Service": "kubernetes", "PersistentVolumeClaim": "kubernetes",
        "Deployment": "kubernetes", "HorizontalPodAutoscaler": "kubernetes",
        "PodDisruptionBudget": "kubernetes",
        "ServiceMonitor": "servicemonitor-monitoring-v1.json",
        "ServingRuntime": "servingruntime-serving-v1alpha1.json",
        "InferenceService": "inferenceservice-serving-v1beta1.json",
    }


@pytest.mark.parametrize(("kind", "path", "value", "message"), [
    ("Deployment", ["spec", "template", "spec", "containers", 0, "portz"], [], "portz"),
    ("Deployment", ["spec", "replicas"], "three", "'three' is not of type"),
    ("ServiceMonitor", ["spec", "endpoints", 0, "interval"], "15 seconds", "does not match"),
    ("ServingRuntime", ["spec", "containers", 0, "imagePullPolicy"], 3, "3 is not of type"),
    ("ServingRuntime", ["spec", "protocolVersions", 0], "v3", "'v3' is not one of"),
    ("InferenceService", ["spec", "predictor", "model", "storageUri"], 7, "7 is not of type"),
    ("InferenceService", ["spec", "predictor", "modle"], {}, "'modle' was unexpected"),
])
def test_mistakes_are_caught(base, kserve, kind, path, value, message):
    doc = copy.deepcopy({**base, **kserve}[kind])
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate(doc)


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _env(doc: dict, config: dict) -> dict[str, str]:
    env = {e["name"]: e.get("value") for e in _container(doc).get("env", [])}
    return {**config["data"], **env}


def test_settings_are_real_names(base, kserve):
    env = _env(base["Deployment"], base["ConfigMap"])
    env |= {e["name"]: e["value"] for e in kserve["ServingRuntime"]["spec"]["containers"][0]["env"]}
    known = set(Settings.model_fields)
    for name in env:
        assert name.startswith("MODELHOST_") and name[10:].lower() in known, name


def test_probes_drain_and_security(base):
    deployment = base["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env = _env(deployment, base["ConfigMap"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["ops"] == int(env["MODELHOST_OPS_PORT"]) != ports["http"]  # the probes' port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "ops"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["MODELHOST_DRAIN_GRACE"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/models", "/tmp", "/var/lib/modelhost"} <= mounts  # every path it writes
    assert env["MODELHOST_MODELS"] == "/models"
    secret_refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
                   if "valueFrom" in e}
    assert secret_refs == {"db-url"} and "db-url" in base["Secret"]["stringData"]


def test_selectors_and_ports_agree(base):
    pod_labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = base[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items(), kind
    monitor = base["ServiceMonitor"]["spec"]
    service_labels = base["Service"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= service_labels.items()
    service_ports = {p["name"] for p in base["Service"]["spec"]["ports"]}
    assert monitor["endpoints"][0]["port"] in service_ports
    assert base["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        base["Deployment"]["metadata"]["name"]


def test_queue_depth_metric_reaches_the_autoscaler(base, repo_server):
    adapter = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    metrics = {m["type"]: m for m in base["HorizontalPodAutoscaler"]["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == rule["name"]["as"]
    series = rule["seriesQuery"].split("{")[0]
    exposed = repo_server.client.get("/metrics")
    assert exposed.status_code == 200
    assert f"\n{series}{{" in exposed.text  # the real server exports the series
    for path in ("/readyz", "/healthz"):  # what the probes ask
        assert repo_server.client.get(path).status_code == 200


def test_kserve_runtime_serves_the_service(kserve):
    runtime, service = kserve["ServingRuntime"], kserve["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert runtime["spec"]["protocolVersions"] == ["v2"] == [model["protocolVersion"]]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    container = runtime["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELHOST_MODELS"] == "/mnt/models"  # where KServe's storage initializer puts it
    assert int(env["MODELHOST_PORT"]) == container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    volumes = {v["name"] for v in runtime["spec"]["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes


def test_conversion_runs_before_the_probes_into_a_persistent_cache():
    """`modelhost prepare` in an init container (no probe kills it mid-conversion), writing to
    a PersistentVolumeClaim the server reads (not a per-pod emptyDir)."""
    docs = render("base")
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    cache = config["MODELHOST_CACHE_DIR"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (init,) = pod["initContainers"]
    assert init["command"] == ["modelhost", "prepare"]
    for container in (init, pod["containers"][0]):
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim in claims
    validate(next(d for d in docs if d["metadata"]["name"] == "modelhost-cache"))
