"""Render every overlay of deploy/k8s with `kubectl kustomize` and check what it produces.

Core kinds are validated against the Kubernetes 1.32 JSON schemas (`kubernetes-validate`, offline,
strict: unknown fields fail). CRDs (cert-manager, Prometheus operator, KEDA) are not in those
schemas; `_check_crd` applies a small structural check of our own instead. Nothing here talks to
a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm.build_engine.skus import get_sku, sku_for_gpu
from autoglm.server.cli import build_parser
from autoglm.server.engine.link import HEADER_KEY, RESTRICTED_PROTOCOLS

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.32.0"
KUBECTL = shutil.which("kubectl")

Manifest = dict[str, Any]

# overlay → (sku, TP×PP GPUs, accepted nvidia.com/gpu.product values, precision)
GPU_OVERLAYS: dict[str, tuple[str, int, set[str], str]] = {
    "l4": ("l4", 1, {"NVIDIA-L4"}, "fp8"),
    "l40s": ("l40s", 1, {"NVIDIA-L40S"}, "fp8"),
    "a100-80gb": ("a100-80gb", 1, {"NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"}, "int8_wo"),
    "h100-sxm": ("h100-sxm", 1, {"NVIDIA-H100-80GB-HBM3"}, "fp8"),
    "h200": ("h200", 1, {"NVIDIA-H200"}, "fp8"),
    "b200": ("b200", 1, {"NVIDIA-B200"}, "fp8"),
    "h100-sxm-tp2": ("h100-sxm", 2, {"NVIDIA-H100-80GB-HBM3"}, "fp8"),
}
OVERLAYS = [*GPU_OVERLAYS, "cpu-dev"]

CRD_KINDS = {
    "cert-manager.io/v1": {"Certificate", "Issuer", "ClusterIssuer"},
    "monitoring.coreos.com/v1": {"PodMonitor", "ServiceMonitor"},
    "keda.sh/v1alpha1": {"ScaledObject"},
}

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (needed to render)"
)


@cache
def render(overlay: str) -> tuple[Manifest, ...]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def find(docs: tuple[Manifest, ...], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def sku_config(docs: tuple[Manifest, ...]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "autoglm-sku")["data"]
    return data


def triton(docs: tuple[Manifest, ...]) -> Manifest:
    return one(docs, "Deployment", f"triton-{sku_config(docs)['sku']}")


def container(pod: Manifest, name: str) -> Manifest:
    matches = [c for c in pod["containers"] if c["name"] == name]
    assert len(matches) == 1
    result: Manifest = matches[0]
    return result


def node_selector_terms(pod: Manifest) -> list[Manifest]:
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms: list[Manifest] = required["nodeSelectorTerms"]
    return terms


def _expression_matches(expr: Manifest, labels: dict[str, str]) -> bool:
    """One NodeSelectorRequirement against a node's labels, as the scheduler evaluates it
    (Kubernetes API reference, NodeSelectorRequirement: Gt/Lt take one value compared as an
    integer; a missing label never matches In, Exists, Gt or Lt)."""
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    value = labels.get(key)
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op == "NotIn":
        return value not in values
    if value is None:
        return False
    if op == "In":
        return value in values
    assert op in {"Gt", "Lt"} and len(values) == 1, expr
    try:
        number = int(value)
    except ValueError:
        return False
    return number > int(values[0]) if op == "Gt" else number < int(values[0])


def node_matches(pod: Manifest, labels: dict[str, str]) -> bool:
    """The pod's required node affinity against one node's labels (terms ORed, expressions
    ANDed)."""
    return any(
        all(_expression_matches(e, labels) for e in term["matchExpressions"])
        for term in node_selector_terms(pod)
    )


def gfd_labels(product: str, driver: str | None) -> dict[str, str]:
    """The labels GPU Feature Discovery writes for one node (NVIDIA/k8s-device-plugin
    internal/lm/nvml.go: driver version split at "."); driver None = GFD has not run."""
    labels = {"nvidia.com/gpu.product": product}
    if driver is not None:
        major, minor, *rev = driver.split(".")
        labels |= {
            "nvidia.com/cuda.driver.major": major,
            "nvidia.com/cuda.driver.minor": minor,
            "nvidia.com/cuda.driver.rev": rev[0] if rev else "",
        }
    return labels


def _check_crd(doc: Manifest) -> None:
    """Structural check of the CRD kinds the core schemas do not cover."""
    kind, spec = doc["kind"], doc.get("spec")
    assert doc["kind"] in CRD_KINDS[doc["apiVersion"]], f"unexpected {doc['apiVersion']} {kind}"
    assert doc["metadata"].get("name") and isinstance(spec, dict), f"{kind} without name/spec"
    if kind == "Certificate":
        assert spec["secretName"] and spec["issuerRef"]["name"]
        assert spec.get("isCA") or spec.get("dnsNames") or spec.get("uris")
        assert set(spec.get("usages", [])) <= {"digital signature", "server auth", "client auth"}
    elif kind == "Issuer":
        assert len({"selfSigned", "ca"} & spec.keys()) == 1
        if "ca" in spec:
            assert spec["ca"]["secretName"]
    elif kind == "PodMonitor":
        assert spec["selector"]["matchLabels"] and spec["podMetricsEndpoints"]
        assert all(e["port"] for e in spec["podMetricsEndpoints"])
    elif kind == "ScaledObject":
        assert spec["scaleTargetRef"]["name"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for t in spec["triggers"]:
            assert t["type"] == "prometheus"
            assert "nv_inference_pending_request_count" in t["metadata"]["query"]
            float(t["metadata"]["threshold"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate(overlay: str) -> None:
    docs = render(overlay)
    assert docs, "nothing rendered"
    for doc in docs:
        assert doc["metadata"].get("namespace", "autoglm") == "autoglm" or doc["kind"] in {
            "Namespace"
        }
        if doc["apiVersion"] in CRD_KINDS:
            _check_crd(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_placeholders_left(overlay: str) -> None:
    text = yaml.safe_dump_all(render(overlay))
    for placeholder in ("triton-SKU", "PROFILE/", "SET-BY-OVERLAY", "value: MODEL\n"):
        assert placeholder not in text, f"{placeholder!r} left in {overlay}"


@pytest.mark.parametrize("overlay", list(GPU_OVERLAYS))
def test_gpu_count_and_node_selection(overlay: str) -> None:
    sku, gpus, products, precision = GPU_OVERLAYS[overlay]
    docs = render(overlay)
    cfg = sku_config(docs)
    assert cfg["sku"] == sku and cfg["precision"] == precision
    assert int(cfg["tp"]) * int(cfg["pp"]) == gpus == int(cfg["worldSize"])
    assert cfg["profile"] == f"{sku}-{precision}-tp{cfg['tp']}pp{cfg['pp']}"
    dep = triton(docs)
    pod = dep["spec"]["template"]["spec"]
    c = container(pod, "triton")
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == gpus
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["WORLD_SIZE"] == str(gpus)
    # Every term (they are ORed) asks for the SKU's GPU.
    for term in node_selector_terms(pod):
        product = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.product"]
        assert len(product) == 1 and product[0]["operator"] == "In"
        assert set(product[0]["values"]) == products
    assert (
        dep["spec"]["template"]["metadata"]["annotations"]["autoglm.dev/profile"] == cfg["profile"]
    )
    image = c["image"]
    assert image.startswith("nvcr.io/nvidia/tritonserver:") and image.endswith("-trtllm-python-py3")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["subPath"] == f"{cfg['profile']}/model-repo"
    assert mounts["/dev/shm"]["name"] in {
        v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"
    }


# The 26.04 Triton containers need a host driver >= 590.44.01 (Triton's compatibility matrix,
# triton-inference-server/server docs/introduction/compatibility.md, branch r26.04).
DRIVERS_OK = ("590.44.01", "590.48.01", "590.100.5", "595.12", "610.57.04")
DRIVERS_TOO_OLD = ("590.10.02", "590.43.99", "580.126.16", "575.57.08", "535.129.03", None)


@pytest.mark.parametrize("overlay", list(GPU_OVERLAYS))
def test_gpu_nodes_need_the_containers_driver(overlay: str) -> None:
    pod = triton(render(overlay))["spec"]["template"]["spec"]
    for product in GPU_OVERLAYS[overlay][2]:
        for driver in DRIVERS_OK:
            assert node_matches(pod, gfd_labels(product, driver)), (product, driver)
        for driver in DRIVERS_TOO_OLD:
            assert not node_matches(pod, gfd_labels(product, driver)), (product, driver)
    # Another GPU with a good driver is not taken either (e.g. an L40 for the l4 overlay).
    assert not node_matches(pod, gfd_labels("NVIDIA-L40", "590.44.01"))


@pytest.mark.parametrize("overlay", list(GPU_OVERLAYS))
def test_gpu_products_are_the_skus_whole_names(overlay: str) -> None:
    """The overlay's nvidia.com/gpu.product values are names the build's SKU detection
    (skus.sku_for_gpu) gives the same SKU, so scheduling and `autoglm build` agree."""
    sku_name = GPU_OVERLAYS[overlay][0]
    sku = get_sku(sku_name)
    assert sku.compute_capability is not None
    for product in GPU_OVERLAYS[overlay][2]:
        found = sku_for_gpu(product, sku.compute_capability)
        assert found is not None and found.name == sku_name, product


def test_cpu_dev_has_no_gpu() -> None:
    docs = render("cpu-dev")
    pod = triton(docs)["spec"]["template"]["spec"]
    c = container(pod, "triton")
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in c["resources"].get("requests", {})
    assert "affinity" not in pod and "tolerations" not in pod
    assert not find(docs, "PersistentVolumeClaim")
    assert "--allow-gpu-metrics=false" in c["args"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_service_and_facade_target(overlay: str) -> None:
    docs = render(overlay)
    cfg = sku_config(docs)
    svc = one(docs, "Service", f"triton-{cfg['sku']}")
    assert svc["spec"]["clusterIP"] == "None"
    assert cfg["tritonHost"] == f"triton-{cfg['sku']}.autoglm.svc.cluster.local"
    facade = container(
        one(docs, "Deployment", "autoglm-facade")["spec"]["template"]["spec"], "facade"
    )
    env = {e["name"]: e.get("value") for e in facade["env"]}
    assert env["TRITON_HOST"] == cfg["tritonHost"]
    assert "--triton=dns:///$(TRITON_HOST):8001" in facade["args"]
    cert = one(docs, "Certificate", f"triton-{cfg['sku']}-tls")
    assert cert["spec"]["dnsNames"] == [cfg["tritonHost"]]
    assert cert["spec"]["issuerRef"]["name"] == "autoglm-link-ca"
    triton_volumes = triton(docs)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "triton-tls"}.items() <= next(
        v for v in triton_volumes if v["name"] == "triton-tls"
    ).items()
    assert (
        next(v for v in triton_volumes if v["name"] == "triton-tls")["secret"]["secretName"]
        == cert["spec"]["secretName"]
    )
    scaled = one(docs, "ScaledObject", f"triton-{cfg['sku']}")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"triton-{cfg['sku']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_facade_probes_replicas_and_cli_flags(overlay: str) -> None:
    docs = render(overlay)
    dep = one(docs, "Deployment", "autoglm-facade")
    assert dep["spec"]["replicas"] >= 2
    pdb = one(docs, "PodDisruptionBudget", "autoglm-facade")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    c = container(dep["spec"]["template"]["spec"], "facade")
    ready, live = c["readinessProbe"]["grpc"], c["livenessProbe"]["grpc"]
    assert ready["service"] == "autoglm.v1.TextGeneration"
    assert live["service"] == "" and live["port"] == ready["port"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == 9464 and ready["port"] == ports["health"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
    assert env["OTEL_SERVICE_NAME"] == "autoglm-facade"
    # Every flag is accepted by the real `autoglm serve` parser (an unknown one exits 2).
    parsed = build_parser().parse_args([*c["command"][1:], *c["args"]])
    assert parsed.command == "serve" and parsed.triton_secret_file is not None
    # The kubelet's probes reach the plaintext health-only port the pod declares.
    assert parsed.health_listen == "0.0.0.0:8086"
    hpa = one(docs, "HorizontalPodAutoscaler", "autoglm-facade")
    assert hpa["spec"]["minReplicas"] >= 2
    svc = one(docs, "Service", "autoglm-facade")
    assert {p["port"] for p in svc["spec"]["ports"]} == {50051, 8000, 9464}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_secure_flags_without_inline_secret(overlay: str) -> None:
    docs = render(overlay)
    c = container(triton(docs)["spec"]["template"]["spec"], "triton")
    args = c["args"]
    for flag in (
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        "--allow-http=false",
        "--model-control-mode=explicit",
        "--load-model=$(TRITON_MODEL)",
        "--disable-auto-complete-config",
    ):
        assert flag in args, f"{flag} missing in {overlay}"
    assert not any(a.startswith("--grpc-restricted-protocol") for a in args)
    env = {e["name"]: e for e in c["env"]}
    assert env["TRITON_RESTRICTED_PROTOCOLS"]["value"] == ",".join(RESTRICTED_PROTOCOLS)
    assert env["TRITON_PROTOCOL_HEADER_KEY"]["value"] == HEADER_KEY
    assert env["TRITON_SECRET_FILE"]["value"] == "/etc/autoglm/triton-link/secret"
    scripts = next(d for d in docs if d["metadata"]["name"].startswith("triton-scripts"))
    wrapper = scripts["data"]["tritonserver-secure.sh"]
    assert "--grpc-restricted-protocol=${TRITON_RESTRICTED_PROTOCOLS:?}:" in wrapper
    assert 'secret=$(cat "${TRITON_SECRET_FILE:?}")' in wrapper
    entry = scripts["data"]["triton-entrypoint.sh"]
    assert "launch_triton_server.py" in entry or "TRTLLM_LAUNCH_SCRIPT" in entry
    assert '--world_size="$WORLD_SIZE"' in entry


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_mounted_never_in_env(overlay: str) -> None:
    docs = render(overlay)
    # No Secret objects with data are shipped: tokens and the link secret come from the operator.
    for secret in find(docs, "Secret"):
        assert not secret.get("data") and not secret.get("stringData")
    for name, pod in pod_specs(docs):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for e in c.get("env", []):
                assert "secretKeyRef" not in e.get("valueFrom", {}), f"{name}/{c['name']}"
            for ef in c.get("envFrom", []):
                assert "secretRef" not in ef, f"{name}/{c['name']}"
        secret_vols = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] in secret_vols:
                    assert m.get("readOnly") is True, f"{name}: {m['name']} not read-only"
    facade = one(docs, "Deployment", "autoglm-facade")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in facade["volumes"]}
    assert vols["tokens"]["secret"]["secretName"] == "autoglm-tokens"
    # The client CA's key never reaches the façade.
    assert [i["key"] for i in vols["client-ca"]["secret"]["items"]] == ["ca.crt"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_runs_as_root(overlay: str) -> None:
    for name, pod in pod_specs(render(overlay)):
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("runAsUser", 0) != 0, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c.get("securityContext", {})
            assert sc.get("runAsUser", psc["runAsUser"]) != 0, f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            assert sc.get("privileged", False) is False, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            assert c.get("resources", {}).get("requests"), f"{name}/{c['name']} no requests"


def _selects(peer: Manifest, labels: dict[str, str]) -> bool:
    sel = peer.get("podSelector", {}).get("matchLabels", {})
    return "namespaceSelector" not in peer and sel.items() <= labels.items() and bool(sel)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    docs = render(overlay)
    policies = find(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    facade_labels = one(docs, "Deployment", "autoglm-facade")["spec"]["template"]["metadata"][
        "labels"
    ]
    triton_labels = triton(docs)["spec"]["template"]["metadata"]["labels"]

    def rules_for(labels: dict[str, str]) -> list[Manifest]:
        return [
            r
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
            and p["spec"]["podSelector"]
            for r in p["spec"].get("ingress", [])
        ]

    triton_rules = rules_for(triton_labels)
    grpc_rules = [r for r in triton_rules if any(p["port"] == 8001 for p in r.get("ports", []))]
    assert grpc_rules, "no rule opens Triton gRPC"
    for r in grpc_rules:
        assert r.get("from"), "Triton gRPC open to everyone"
        assert all(_selects(peer, facade_labels) for peer in r["from"])
        assert not all(_selects(peer, triton_labels) for peer in r["from"])
    for r in triton_rules:
        assert r.get("ports"), "a Triton ingress rule without ports"
        for peer in r.get("from", []):
            if "namespaceSelector" in peer:
                assert {p["port"] for p in r["ports"]} == {8002}
                ns = peer["namespaceSelector"]["matchLabels"]
                assert ns == {"kubernetes.io/metadata.name": "monitoring"}
    facade_rules = rules_for(facade_labels)
    assert {p["port"] for r in facade_rules for p in r["ports"]} == {50051, 8000, 9464}
    for r in facade_rules:
        if {p["port"] for p in r["ports"]} == {9464}:
            assert r["from"][0]["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "monitoring"
            }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_and_autoscaling(overlay: str) -> None:
    docs = render(overlay)
    monitors = {m["metadata"]["name"] for m in find(docs, "PodMonitor")}
    assert monitors == {"autoglm-facade", "triton"}
    c = container(triton(docs)["spec"]["template"]["spec"], "triton")
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 8002
    assert "--metrics-port=8002" in c["args"]
    scaled = find(docs, "ScaledObject")
    assert len(scaled) == 1
