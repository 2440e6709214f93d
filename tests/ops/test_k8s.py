"""The Kubernetes manifests in k8s/ against the code they deploy.

Loads every YAML document and checks what would break the exchange if it drifted:
the KafkaTopics are exactly ``crypton.topics.TOPICS`` (names, compaction, the
partition count the settings declare, 3 replicas with 2 in sync), every CRYPTON_*
variable the manifests set is one the code reads, the market file is the packaged
one, and the generated files are what ``k8s/generate.py`` writes today.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from crypton.broker import ACCESS
from crypton.config import load_markets
from crypton.topics import BASES, LEGACY_BASES, TOPICS, topic_name

ROOT = Path(__file__).parents[2]
K8S = ROOT / "k8s"
SOURCES = [ROOT / "crypton", ROOT / "api", ROOT / "dataflows"]
_ENV_READ = re.compile(r"""["'](CRYPTON_[A-Z0-9_]+)["']""")

Doc = dict[str, Any]


def _documents() -> list[tuple[Path, Doc]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text("utf-8")):
            if doc is not None:
                out.append((path, doc))
    return out


def _kind(kind: str, name: str | None = None) -> list[Doc]:
    return [
        d
        for _, d in _documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(kind: str, name: str) -> Doc:
    (doc,) = _kind(kind, name)
    return doc


def _settings() -> dict[str, str]:
    return _one("ConfigMap", "crypton-settings")["data"]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _containers(doc: Doc) -> Iterator[Doc]:
    pod = doc["spec"]["template"]["spec"]
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def env_read_by_code() -> set[str]:
    """Every CRYPTON_* name that appears as a string literal in the deployed packages."""
    names: set[str] = set()
    for source in SOURCES:
        for path in source.rglob("*.py"):
            names.update(_ENV_READ.findall(path.read_text("utf-8")))
    return names


def env_set_by_manifests() -> set[str]:
    names = {k for k in _settings() if k.startswith("CRYPTON_")}
    for kind in ("Deployment", "StatefulSet"):
        for doc in _kind(kind):
            for container in _containers(doc):
                names.update(
                    e["name"] for e in container.get("env", []) if e["name"].startswith("CRYPTON_")
                )
    return names


# --- the tests ---------------------------------------------------------------------------


def test_every_file_loads_and_every_document_has_kind_and_name() -> None:
    docs = _documents()
    assert len(docs) > 10
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), (path, doc["kind"])


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text("utf-8"))
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"admin-secret.example.yaml"}
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (K8S / file).is_file(), file


def test_kafka_topics_match_crypton_topics_exactly() -> None:
    topics = _kind("KafkaTopic")
    by_name = {t["spec"]["topicName"]: t for t in topics}
    prefix = _settings()["CRYPTON_TOPIC_PREFIX"]
    assert list(by_name) == [spec.name(prefix) for spec in TOPICS]
    partitions = int(_settings()["CRYPTON_PARTITIONS"])
    for spec in TOPICS:
        topic = by_name[spec.name(prefix)]
        config = topic["spec"]["config"]
        assert config["cleanup.policy"] == ("compact" if spec.compacted else "delete"), spec
        assert topic["spec"]["partitions"] == partitions, spec
        assert topic["spec"]["replicas"] == 3
        assert config["min.insync.replicas"] == "2"
        if not spec.compacted:
            assert config["retention.ms"] == "-1", f"{spec.logical}: history must not expire"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "crypton"


def test_the_kafka_cluster_is_durable() -> None:
    kafka = _one("Kafka", "crypton")
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    assert config["auto.create.topics.enable"] is False
    assert config["unclean.leader.election.enable"] is False
    (pool,) = _kind("KafkaNodePool")
    assert pool["spec"]["replicas"] >= 3
    bootstrap = _settings()["CRYPTON_KAFKA_BOOTSTRAP"]
    assert bootstrap.startswith(f"{kafka['metadata']['name']}-kafka-bootstrap:")


def test_generated_files_are_up_to_date() -> None:
    generator = _generator()
    for name, render in generator.GENERATED.items():
        assert (K8S / name).read_text("utf-8") == render(), (
            f"k8s/{name} is stale: run python k8s/generate.py"
        )


def test_env_vars_set_by_the_manifests_are_read_by_the_code() -> None:
    unknown = env_set_by_manifests() - env_read_by_code()
    assert not unknown, f"set in k8s/ but read nowhere in crypton/, api/, dataflows/: {unknown}"


def test_the_env_check_catches_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "tests.ops.test_k8s._settings", lambda: {"CRYPTON_PARTITION": "12"}, raising=True
    )
    assert "CRYPTON_PARTITION" in env_set_by_manifests() - env_read_by_code()


def test_markets_file_is_the_packaged_one() -> None:
    copy = tomllib.loads((K8S / "markets.toml").read_text("utf-8"))
    packaged = tomllib.loads((ROOT / "crypton" / "markets.toml").read_text("utf-8"))
    assert copy == packaged
    load_markets(K8S / "markets.toml")  # and it validates


def test_api_probes_secret_and_scaling() -> None:
    api = _one("Deployment", "crypton-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    secret = yaml.safe_load((K8S / "admin-secret.example.yaml").read_text("utf-8"))
    # The order-id secret too: replicas with their own would name a retry differently.
    for name in ("CRYPTON_ADMIN_TOKEN", "CRYPTON_API_SECRET"):
        ref = next(e for e in container["env"] if e["name"] == name)["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    port = int(_settings()["CRYPTON_API_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert _settings()["CRYPTON_API_HOST"] == "0.0.0.0"
    hpa = _one("HorizontalPodAutoscaler", "crypton-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "crypton-api"
    assert _one("PodDisruptionBudget", "crypton-api")["spec"]["minAvailable"] >= 1


def test_dataflow_cluster_is_consistent() -> None:
    sts = _one("StatefulSet", "crypton-dataflow")
    replicas = sts["spec"]["replicas"]
    pod = sts["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert int(init_env["REPLICAS"]) == replicas
    # Each process must hold at least one recovery partition to share the work.
    assert int(init_env["RECOVERY_PARTITIONS"]) >= replicas
    assert "python -m bytewax.recovery" in init["command"][-1]
    assert "set_page_size" in init["command"][-1]  # the pages `crypton dataflow` makes
    (main,) = pod["containers"]
    command = main["command"][-1]
    for flag in ("dataflows.exchange:flow", "-r /recovery", "-b 0", "-i ", "-a "):
        assert flag in command, flag
    peers = next(e["value"] for e in main["env"] if e["name"] == "PEERS").split(";")
    service = sts["spec"]["serviceName"]
    assert peers == [f"{sts['metadata']['name']}-{i}.{service}:2101" for i in range(replicas)]
    assert _one("Service", service)["spec"]["clusterIP"] == "None"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/recovery"
    metrics_port = int(_settings()["CRYPTON_DATAFLOW_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": metrics_port} in main["ports"]
    assert _one("PodDisruptionBudget", "crypton-dataflow")


def test_markets_are_mounted_where_the_settings_say() -> None:
    where = Path(_settings()["CRYPTON_MARKETS"])
    for kind, name in (("Deployment", "crypton-api"), ("StatefulSet", "crypton-dataflow")):
        pod = _one(kind, name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(where.parent))
        assert volumes[mount["name"]]["configMap"]["name"] == "crypton-markets"


def test_monitors_select_the_workloads() -> None:
    service_monitor = _one("ServiceMonitor", "crypton-api")
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert _one("Service", "crypton-api")["metadata"]["labels"].items() >= selector.items()
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pod_monitor = _one("PodMonitor", "crypton-dataflow")
    labels = _one("StatefulSet", "crypton-dataflow")["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= pod_monitor["spec"]["selector"]["matchLabels"].items()


def _acls(user: Doc) -> set[tuple[str, str, str, str]]:
    out = set()
    for acl in user["spec"]["authorization"]["acls"]:
        assert acl.get("host", "*") == "*"
        resource = acl["resource"]
        for operation in acl["operations"]:
            out.add(
                (
                    resource["type"],
                    resource.get("name", ""),
                    resource.get("patternType", ""),
                    operation,
                )
            )
    return out


def test_the_log_takes_only_authenticated_clients() -> None:
    spec = _one("Kafka", "crypton")["spec"]["kafka"]
    for listener in spec["listeners"]:
        # Anyone who can write the wallet inbox can credit money.
        assert listener["authentication"]["type"] == "scram-sha-512", listener["name"]
        assert listener["tls"] is True, f"{listener['name']}: SCRAM needs TLS around it"
    assert spec["authorization"]["type"] == "simple"
    assert spec["config"].get("allow.everyone.if.no.acl.found") is False
    port = int(_settings()["CRYPTON_KAFKA_BOOTSTRAP"].rpartition(":")[2])
    assert port in {listener["port"] for listener in spec["listeners"]}
    assert _settings()["CRYPTON_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert _settings()["CRYPTON_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_every_component_has_a_kafka_user_with_exactly_its_acls() -> None:
    users = {u["metadata"]["name"]: u for u in _kind("KafkaUser")}
    assert set(users) == {f"crypton-{component}" for component in ACCESS}
    prefix = _settings()["CRYPTON_TOPIC_PREFIX"]
    for component, grants in ACCESS.items():
        user = users[f"crypton-{component}"]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "crypton"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authorization"]["type"] == "simple"
        expected = {
            (
                g.resource,
                "" if g.resource == "cluster" else g.resource_name(prefix),
                "" if g.resource == "cluster" else g.pattern(),
                operation,
            )
            for g in grants
            for operation in g.operations
        }
        assert _acls(user) == expected, component


def test_the_acls_let_each_component_do_its_job_and_no_more() -> None:
    prefix = _settings()["CRYPTON_TOPIC_PREFIX"]
    name = {spec.logical: spec.name(prefix) for spec in TOPICS}
    writes = {
        u["metadata"]["name"]: {n for t, n, _, op in _acls(u) if t == "topic" and op == "Write"}
        for u in _kind("KafkaUser")
    }
    assert writes["crypton-api"] == {name["wallet.inbox"], name["users"]}
    assert writes["crypton-auditor"] == set()
    # The dataflow writes every topic but the users (API keys belong to the API), and
    # its own topic of bases, which it may create.
    bases = topic_name(BASES, prefix)
    assert writes["crypton-dataflow"] == set(name.values()) - {name["users"]} | {bases}
    dataflow = _acls(_one("KafkaUser", "crypton-dataflow"))
    assert {op for t, n, _, op in dataflow if n == bases} == {"Read", "Write", "Create"}
    legacy = topic_name(LEGACY_BASES, prefix)  # read for deltas from before the slots
    assert {op for t, n, _, op in dataflow if n == legacy} == {"Read"}
    reads = {n for t, n, _, op in _acls(_one("KafkaUser", "crypton-auditor")) if op == "Read"}
    assert reads >= set(name.values())


@pytest.mark.parametrize(
    ("kind", "name", "user"),
    [
        ("Deployment", "crypton-api", "crypton-api"),
        ("StatefulSet", "crypton-dataflow", "crypton-dataflow"),
    ],
)
def test_workloads_log_in_as_their_own_kafka_user(kind: str, name: str, user: str) -> None:
    pod = _one(kind, name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CRYPTON_KAFKA_SASL_USERNAME"]["value"] == user
    password = env["CRYPTON_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    # The User Operator keeps each KafkaUser's password in a Secret of its name.
    assert password == {"name": user, "key": "password"}
    assert _one("KafkaUser", user)
    # The broker's certificate is checked against Strimzi's cluster CA.
    ca = Path(_settings()["CRYPTON_KAFKA_SSL_CA_LOCATION"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "crypton-cluster-ca-cert"
    assert {"key": "ca.crt", "path": ca.name} in volume["secret"]["items"]


def test_core_resources_validate_against_the_kubernetes_schemas() -> None:
    validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev extra)"
    )
    checked = 0
    for _, doc in _documents():
        if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].startswith(
            ("apps/", "policy/", "autoscaling/")
        ):
            continue  # custom resources (Strimzi, Prometheus Operator): no schema offline
        validate.validate(doc, "1.30.0", strict=True)
        checked += 1
    assert checked >= 8


def test_the_scale_out_topology() -> None:
    """Three Kafka nodes, two dataflow processes, two API replicas: what
    ``crypton up --nodes 3 --dataflow-processes 2 --api-replicas 2`` runs on one machine."""
    (pool,) = _kind("KafkaNodePool")
    assert pool["spec"]["replicas"] == 3
    api = _one("Deployment", "crypton-api")
    assert api["spec"]["replicas"] == 2
    assert _one("HorizontalPodAutoscaler", "crypton-api")["spec"]["minReplicas"] >= 2
    sts = _one("StatefulSet", "crypton-dataflow")
    replicas = sts["spec"]["replicas"]
    assert replicas == 2
    (main,) = sts["spec"]["template"]["spec"]["containers"]
    command = main["command"][-1]
    workers = int(command.split("-w ", 1)[1].split()[0]) if "-w " in command else 1
    # A worker without an inbox partition holds nothing: partitions >= all the workers.
    assert int(_settings()["CRYPTON_PARTITIONS"]) >= replicas * workers
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["CRYPTON_SINK_PARTS"] == str(replicas)
    # Every pod its own volume (SQLite's WAL cannot be shared over a network file system).
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The peers find each other by the headless Service's names before they are ready.
    service = _one("Service", sts["spec"]["serviceName"])
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {"name": "timely", "port": 2101} in service["spec"]["ports"]
