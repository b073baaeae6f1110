"""Deployment: the Dockerfile, the Helm chart and the plain manifests in k8s/.

The chart is rendered and linted by the real `helm` (`make tools`), and every object is
validated by real schemas: Kubernetes kinds with kubernetes-validate --strict, ray.io and
monitoring.coreos.com kinds against the CRDs vendored in ../shared (KubeRay v1.7.0,
prometheus-operator), with unknown fields forbidden as `kubectl apply --validate=strict`
does. Without a Docker engine or a cluster, this is what keeps the image recipe, the
chart, k8s/*.yaml and scripts/kind-e2e.sh (the real end-to-end run) honest.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import functools
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from conftest import REPO, SHARED, tool
from pbt_job.k8s_events import RAYJOB_NAME_ENV
from pbt_job.training.config import load_config

CHART = REPO / "helm" / "pbt-job"
KUBERNETES_VERSION = "1.34.0"
CRD_DIRS = {"ray.io": SHARED / "kuberay" / "crds", "monitoring.coreos.com": SHARED / "prometheus-operator" / "crds"}
RELEASE = "pbt-job"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_PIN = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[")).split("==")[1]
STATIC_SECRET = "test-secret-of-the-static-keys-case"
STATIC_KEYS = ("--set", "storage.accessKeyId=AKIATESTSTATIC", "--set", f"storage.secretAccessKey={STATIC_SECRET}")
SHARED_CLUSTER_VALUES = "helm/pbt-job/ci/shared-cluster-values.yaml"


@dataclass(frozen=True)
class Case:
    """One way to install the chart, and what its rendering must show."""

    args: tuple[str, ...]
    gpus: dict[str, int] = field(default_factory=lambda: {"gpu": 1})
    """GPUs per worker of each group."""
    secret: str | None = None
    """The secret key the chart puts in its Secret (None: it creates no Secret)."""
    secret_ref: str | None = None
    """The Secret the pods take their keys from (None: no keys, the default AWS credential chain)."""
    service_account: str | None = RELEASE
    """The ServiceAccount of every Ray pod (None: the namespace's default)."""
    monitoring: bool = True
    autoscaling: bool = False


CASES = {
    # values.yaml as shipped: no S3 keys, a ServiceAccount for the default AWS credential chain.
    "defaults": Case(()),
    "static-keys": Case(STATIC_KEYS, secret=STATIC_SECRET, secret_ref=f"{RELEASE}-storage"),
    "cpu-only": Case(
        ("-f", "k8s/kind-values.yaml"), gpus={"cpu": 0}, secret_ref="minio-credentials", monitoring=False
    ),
    "two-gpu-pools": Case(
        ("-f", "helm/pbt-job/ci/two-gpu-pools-values.yaml"),
        gpus={"a10g": 1, "a100": 4, "cpu": 0},
        secret="example-secret-of-the-pools-case",
        secret_ref=f"{RELEASE}-storage",
    ),
    "existing-secret": Case(
        ("--set", "storage.existingSecret=team-s3,serviceAccount.create=false"), secret_ref="team-s3", service_account=None
    ),
    "autoscaling": Case(
        ("-f", "helm/pbt-job/ci/autoscaling-values.yaml"),
        secret="example-secret-of-the-autoscaling-case",
        secret_ref=f"{RELEASE}-storage",
        autoscaling=True,
    ),
    "monitoring-off": Case(
        ("--set", "monitoring.podMonitor.enabled=false,monitoring.prometheusRule.enabled=false,"
                  "monitoring.grafanaDashboard.enabled=false"),
        monitoring=False,
    ),
    # The README's worked example: IRSA, Kueue, priority class, two GPU groups and samplers, autoscaling.
    "shared-cluster": Case(
        ("-f", SHARED_CLUSTER_VALUES),
        gpus={"a100": 8, "l4": 1, "cpu-samplers": 0},
        service_account="pbt-job-trainer",
        autoscaling=True,
    ),
}
PLAIN_MANIFESTS = ("k8s/rayjob.yaml", "k8s/minio.yaml")


def helm(*args: str) -> subprocess.CompletedProcess:
    """The real helm (`make tools`), run in the repository."""
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def render(*args: str) -> tuple[dict, ...]:
    """The chart's objects, installed with `args` in namespace training."""
    proc = helm("template", RELEASE, str(CHART), "--namespace", "training", *args)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@functools.cache
def documents(source: str) -> tuple[dict, ...]:
    """The objects of a chart case (rendered once) or of a plain manifest file."""
    if source in CASES:
        return render(*CASES[source].args)
    return tuple(doc for doc in yaml.safe_load_all((REPO / source).read_text()) if doc)


def only(docs: tuple[dict, ...], kind: str, name_suffix: str = "") -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    return doc


def ray_groups(rayjob: dict) -> dict[str, dict]:
    """Group specs (rayStartParams and template) by group: "head" and each worker group name."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def ray_pods(rayjob: dict) -> dict[str, dict]:
    """Pod templates by group: "head" and each worker group name."""
    return {group: spec["template"] for group, spec in ray_groups(rayjob).items()}


def forbid_unknown_fields(schema: dict) -> None:
    """Make a CRD schema strict: objects with `properties` accept no other field (unless they preserve unknown fields)."""
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    children = [*schema.get("properties", {}).values()]
    children += [sub for key in ("allOf", "anyOf", "oneOf") for sub in schema.get(key, [])]
    children += [schema[key] for key in ("items", "additionalProperties") if isinstance(schema.get(key), dict)]
    for child in children:
        forbid_unknown_fields(child)


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    group, _, version = api_version.partition("/")
    path = CRD_DIRS[group] / f"{group}_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = entry["schema"]["openAPIV3Schema"]
    forbid_unknown_fields(schema)
    return jsonschema.Draft202012Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    """'path: message' for each way `doc` breaks its CRD (skips the test without ../shared)."""
    if not SHARED.is_dir():
        pytest.skip(f"runs only where ../shared exists (CI always has it): {SHARED}, with the vendored KubeRay "
                    "and prometheus-operator CRDs, is absent")
    errors = crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def is_custom(doc: dict) -> bool:
    return doc["apiVersion"].partition("/")[0] in CRD_DIRS


# --- Helm: lint and render every case, validate every object -----------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case):
    proc = helm("lint", "--strict", str(CHART), *CASES[case].args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("source", [*CASES, *PLAIN_MANIFESTS])
def test_kubernetes_objects_validate_strictly(source):
    docs = [doc for doc in documents(source) if not is_custom(doc)]
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, err.path))}: {err.message}")


@pytest.mark.parametrize("source", [*CASES, "k8s/rayjob.yaml"])
def test_custom_resources_validate_against_the_crds(source):
    docs = [doc for doc in documents(source) if is_custom(doc)]
    assert any(doc["kind"] == "RayJob" for doc in docs)
    for doc in docs:
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


HEAD_CONTAINER = ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0]
TYPOS = {  # id: (kind, path to the object, misspelt field)
    "RayJob spec": ("RayJob", ["spec"], "shutdownAfterJobFinish"),
    "worker group": ("RayJob", ["spec", "rayClusterSpec", "workerGroupSpecs", 0], "workerGroupSpec"),
    "embedded container": ("RayJob", HEAD_CONTAINER, "resource"),
    "PodMonitor endpoint": ("PodMonitor", ["spec", "podMetricsEndpoints", 0], "targetPorts"),
    "PrometheusRule rule": ("PrometheusRule", ["spec", "groups", 0, "rules", 1], "expression"),
}


@pytest.mark.parametrize(("kind", "path", "typo"), TYPOS.values(), ids=TYPOS)
def test_crd_validation_rejects_unknown_fields(kind, path, typo):
    """The CRD check is strict: a misspelt field is an error, not silently pruned as the API server would."""
    doc = copy.deepcopy(only(documents("defaults"), kind))
    functools.reduce(lambda node, key: node[key], path, doc)[typo] = 1
    assert any(typo in error for error in crd_errors(doc))


# --- What the rendered objects must say ---------------------------------------------


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize("case", CASES)
def test_gpus_and_their_toleration_only_on_gpu_pools(case):
    pods = ray_pods(only(documents(case), "RayJob"))
    assert set(pods) == {"head", *CASES[case].gpus}
    for group, pod in pods.items():
        gpus = CASES[case].gpus.get(group, 0)
        [container] = pod["spec"]["containers"]
        for amounts in container["resources"].values():
            assert amounts.get("nvidia.com/gpu", 0) == gpus, (group, amounts)
        tolerated = [t for t in pod["spec"].get("tolerations", []) if t["key"] == "nvidia.com/gpu"]
        assert tolerated == ([GPU_TOLERATION] if gpus else []), group


def test_a_group_s_tolerations_replace_the_gpu_default():
    """gpuTolerations is what a GPU group gets unless it names tolerations of its own."""
    pods = ray_pods(only(documents("two-gpu-pools"), "RayJob"))
    assert pods["a10g"]["spec"]["tolerations"] == [GPU_TOLERATION]
    dedicated = {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    assert pods["a100"]["spec"]["tolerations"] == [GPU_TOLERATION, dedicated]
    team = {"key": "team", "operator": "Equal", "value": "ml-research", "effect": "NoSchedule"}
    shared = ray_pods(only(documents("shared-cluster"), "RayJob"))
    assert shared["a100"]["spec"]["tolerations"] == shared["l4"]["spec"]["tolerations"] == [GPU_TOLERATION, team]
    assert [t["value"] for t in shared["cpu-samplers"]["spec"]["tolerations"]] == ["SPOT"]


@pytest.mark.parametrize("case", CASES)
def test_credentials_only_in_the_secret_or_from_the_service_account(case):
    """Keys reach the pods through secretKeyRef, and no other object holds them; without keys
    there is no key variable at all and the pods run as the ServiceAccount (IRSA, Workload Identity)."""
    docs, expected = documents(case), CASES[case]
    secrets = [doc for doc in docs if doc["kind"] == "Secret"]
    if expected.secret is None:
        assert secrets == []
    else:
        [stored] = secrets
        assert stored["metadata"]["name"] == expected.secret_ref
        assert base64.b64decode(stored["data"]["AWS_SECRET_ACCESS_KEY"]).decode() == expected.secret
        assert not any(expected.secret in yaml.safe_dump(doc) for doc in docs if doc["kind"] != "Secret")
    accounts = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "ServiceAccount"]
    assert accounts == ([] if expected.service_account is None else [expected.service_account])
    for group, pod in ray_pods(only(docs, "RayJob")).items():
        assert pod["spec"].get("serviceAccountName") == expected.service_account, group
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if expected.secret_ref is None:
                assert key not in env, group
            else:
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": expected.secret_ref, "key": key}, group


def head_env(rayjob: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in ray_pods(rayjob)["head"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("case", CASES)
def test_the_head_s_service_account_may_post_events_on_its_rayjob(case):
    """The Role allows creating events and reading this RayJob, nothing else; the binding names the
    ServiceAccount the head pod runs as ("default" when the chart names none), and only the head
    container (where the driver runs) is told the RayJob's name."""
    docs = documents(case)
    rayjob = only(docs, "RayJob")
    name = rayjob["metadata"]["name"]
    role, binding = only(docs, "Role"), only(docs, "RoleBinding")
    assert role["metadata"]["name"] == f"{name}-events"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "resourceNames": [name], "verbs": ["get"]},
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-events"}
    head_account = ray_pods(rayjob)["head"]["spec"].get("serviceAccountName", "default")
    assert head_account == (CASES[case].service_account or "default")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": head_account}]
    assert head_env(rayjob)[RAYJOB_NAME_ENV] == name
    for group, pod in ray_pods(rayjob).items():
        if group != "head":
            assert RAYJOB_NAME_ENV not in [e["name"] for e in pod["spec"]["containers"][0]["env"]], group


def test_the_events_binding_follows_the_head_s_own_service_account():
    docs = render("--set", "serviceAccount.create=false,head.serviceAccountName=driver")
    assert ray_pods(only(docs, "RayJob"))["head"]["spec"]["serviceAccountName"] == "driver"
    assert only(docs, "RoleBinding")["subjects"] == [{"kind": "ServiceAccount", "name": "driver"}]


def test_kubernetes_events_off_renders_no_role_and_no_rayjob_name():
    docs = render("--set", "kubernetesEvents.enabled=false")
    assert not [doc["kind"] for doc in docs if doc["kind"] in ("Role", "RoleBinding")]
    assert RAYJOB_NAME_ENV not in head_env(only(docs, "RayJob"))


def test_per_group_values_land_in_their_pod():
    """KubeRay's per-group values go to that group's pod only; the chart's labels and env come first."""
    proc = helm("template", RELEASE, str(CHART), *CASES["two-gpu-pools"].args, "--set", "head.serviceAccountName=driver")
    assert proc.returncode == 0, proc.stderr
    pods = ray_pods(only(tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc), "RayJob"))
    head, a100, a10g = pods["head"], pods["a100"], pods["a10g"]
    assert head["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    assert [pod["spec"]["serviceAccountName"] for pod in (head, a100)] == ["driver", RELEASE]
    assert a100["metadata"]["labels"]["team"] == "rl"
    assert a100["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    assert "team" not in a10g["metadata"]["labels"] and "annotations" not in a10g["metadata"]
    [container] = a100["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert names[-2:] == ["TUNE_GLOBAL_CHECKPOINT_S", "NCCL_DEBUG"] and names[0] == "AWS_ACCESS_KEY_ID"
    assert "TUNE_GLOBAL_CHECKPOINT_S" in [e["name"] for e in a10g["spec"]["containers"][0]["env"]]
    assert container["envFrom"] == [{"configMapRef": {"name": "nccl-settings"}}]
    assert [v["name"] for v in a100["spec"]["volumes"]] == ["shared-memory", "datasets"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/dev/shm", "/data"]
    assert [v["name"] for v in a10g["spec"]["volumes"]] == ["shared-memory"]


def test_irsa_role_kueue_queue_and_priority_of_the_shared_cluster_example():
    docs = documents("shared-cluster")
    values = yaml.safe_load((REPO / SHARED_CLUSTER_VALUES).read_text())
    account = only(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    rayjob = only(docs, "RayJob")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "ml-team"
    assert rayjob["metadata"]["labels"]["team"] == "ml-research"
    assert "suspend" not in rayjob["spec"], "Kueue suspends and resumes a queued job itself"
    for group, pod in ray_pods(rayjob).items():
        assert pod["spec"]["priorityClassName"] == "ml-team-high", group
    affinity = ray_pods(rayjob)["a100"]["spec"]["affinity"]
    assert affinity == values["workerGroups"][0]["affinity"]


def test_readme_shows_the_shared_cluster_example_as_tested():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Installing on a shared cluster"):]
    [block] = re.findall(r"```yaml\n(.*?)```", section.split("\n### ")[0], re.DOTALL)
    assert block == (REPO / SHARED_CLUSTER_VALUES).read_text()


@pytest.mark.parametrize("case", CASES)
def test_mounted_config_passes_pbt_job_validate(case, tmp_path):
    """The entrypoint reads the ConfigMap's job.yaml where the head mounts it, and `pbt-job validate` accepts it."""
    docs = documents(case)
    rayjob, config_map = only(docs, "RayJob"), only(docs, "ConfigMap", "-config")
    head = ray_pods(rayjob)["head"]["spec"]
    [volume] = [v for v in head["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    [mount] = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    entrypoint = rayjob["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["pbt-job", "train"]
    assert entrypoint[entrypoint.index("--config") + 1] == f"{mount['mountPath']}/job.yaml"
    assert entrypoint[entrypoint.index("--resume") + 1] == "auto"
    path = tmp_path / "job.yaml"
    path.write_text(config_map["data"]["job.yaml"])
    command = [sys.executable, "-m", "pbt_job.cli", "validate", "--config", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", CASES)
def test_pods_run_as_non_root_with_cpu_and_memory_limits(case):
    """Every example keeps requests equal to limits (Guaranteed QoS); KubeRay sizes Ray from the limits."""
    rayjob = only(documents(case), "RayJob")
    for group, pod in ray_pods(rayjob).items():
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, group
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, group
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], group
            assert {"cpu", "memory"} <= resources["limits"].keys(), group
    autoscaler = rayjob["spec"]["rayClusterSpec"].get("autoscalerOptions")
    if autoscaler:
        assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
        assert autoscaler["resources"]["requests"] == autoscaler["resources"]["limits"]


@pytest.mark.parametrize("case", CASES)
def test_dev_shm_is_memory_backed_and_holds_the_object_store(case):
    """/dev/shm is a memory-backed emptyDir of shmSize (default 30% of the memory limit), and
    Ray's object store (80% of it, unless set) fits in it, so Ray never falls back to disk."""
    for group, spec in ray_groups(only(documents(case), "RayJob")).items():
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["emptyDir"]["medium"] == "Memory", group
        shm = parse_quantity(volume["emptyDir"]["sizeLimit"])
        memory = parse_quantity(container["resources"]["limits"]["memory"])
        store = int(spec["rayStartParams"]["object-store-memory"])
        assert store <= shm <= memory, group
        if (case, group) == ("two-gpu-pools", "a100"):  # sets both
            assert (shm, store) == (128 * 2**30, 100 * 10**9)
        elif (case, group) == ("shared-cluster", "a100"):  # sets shmSize
            assert (shm, store) == (64 * 2**30, int(64 * 2**30 * 4 / 5))
        else:
            assert shm == int(memory * 3 / 10 / 2**20) * 2**20, group
            assert store == int(shm * 4 / 5), group


def test_rayjob_labels_annotations_suspend_and_kueue_queue_name():
    proc = helm(
        "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", "training",
        "--set", "kueue.queueName=team-a,job.suspend=true,job.labels.team=rl,job.annotations.owner=alice",
    )
    assert proc.returncode == 0, proc.stderr
    manifest, notes = proc.stdout.split("NOTES:")
    rayjob = only(tuple(doc for doc in yaml.safe_load_all(manifest.split("MANIFEST:")[1]) if doc), "RayJob")
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert rayjob["metadata"]["labels"]["team"] == "rl"
    assert rayjob["metadata"]["annotations"] == {"owner": "alice"}
    assert rayjob["spec"]["suspend"] is True
    assert "until LocalQueue team-a admits it" in notes
    assert "kubectl -n training get workloads" in notes
    assert "kubectl -n training get rayjob pbt-job -o jsonpath='{.spec.suspend}'" in notes
    assert "suspend" not in only(documents("defaults"), "RayJob")["spec"]


@pytest.mark.parametrize("case", CASES)
def test_pod_monitor_scrapes_ray_everywhere_and_the_exporter_on_the_head(case):
    docs = documents(case)
    monitors = [doc for doc in docs if doc["kind"] == "PodMonitor"]
    if not CASES[case].monitoring:
        assert monitors == []
        return
    [monitor] = monitors
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pods = ray_pods(only(docs, "RayJob"))
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {}
    for group, pod in pods.items():
        assert selector.items() <= pod["metadata"]["labels"].items(), group
        ports[group] = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    scraped = [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]]
    assert scraped == ["metrics", "pbt-metrics"]
    assert all(group_ports["metrics"] == 8080 for group_ports in ports.values())
    assert [group for group, group_ports in ports.items() if "pbt-metrics" in group_ports] == ["head"]
    rayjob = only(docs, "RayJob")
    entrypoint = rayjob["spec"]["entrypoint"].split()
    assert ports["head"]["pbt-metrics"] == int(entrypoint[entrypoint.index("--metrics-port") + 1])
    assert rayjob["spec"]["submissionMode"] == "SidecarMode", "the driver and its exporter must run in the head pod"


@pytest.mark.parametrize("case", CASES)
def test_grafana_dashboard_config_map_holds_the_dashboard_json(case):
    dashboards = [doc for doc in documents(case) if doc["metadata"]["name"].endswith("-dashboard")]
    if not CASES[case].monitoring:
        assert dashboards == []
        return
    [dashboard] = dashboards
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    [text] = dashboard["data"].values()
    assert json.loads(text)["panels"]


@pytest.mark.parametrize("case", CASES)
def test_autoscaling_v2_keeps_the_population_pending(case):
    docs = documents(case)
    cluster = only(docs, "RayJob")["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is CASES[case].autoscaling
    env = {e["name"]: e.get("value") for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    if CASES[case].autoscaling:
        assert cluster["autoscalerOptions"]["version"] == "v2"
        population = yaml.safe_load(only(docs, "ConfigMap", "-config")["data"]["job.yaml"])["pbt"]["population"]
        assert env["TUNE_MAX_PENDING_TRIALS_PG"] == str(population)
    else:
        assert "autoscalerOptions" not in cluster and "TUNE_MAX_PENDING_TRIALS_PG" not in env


@pytest.mark.parametrize("case", ["defaults", "cpu-only"])
def test_the_whole_population_fits_the_pools(case, tmp_path):
    """Every trial runs at once: population x (a trial's CPUs, GPUs) <= what the pools offer.

    A trial asks RLlib for its main process (at least one CPU when it also learns, see
    ray/rllib/algorithms/utils.py `_get_main_process_bundle`), one CPU per env runner
    and, per remote learner, its GPUs (or one CPU without GPU).
    """
    docs = documents(case)
    path = tmp_path / "job.yaml"
    path.write_text(only(docs, "ConfigMap", "-config")["data"]["job.yaml"])
    job = load_config(path, [])
    res = job.resources
    if res.num_learners:
        trial_cpus = res.num_cpus_per_trial + (0 if res.num_gpus_per_learner else res.num_learners)
    else:
        trial_cpus = max(res.num_cpus_per_trial, 0 if res.num_gpus_per_learner else 1)
    trial_cpus += res.num_env_runners * res.num_cpus_per_env_runner
    trial_gpus = max(res.num_learners, 1) * res.num_gpus_per_learner
    groups = only(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = [(g["replicas"], g["template"]["spec"]["containers"][0]["resources"]["limits"]) for g in groups]
    assert job.pbt.population * trial_cpus <= sum(n * float(lim["cpu"]) for n, lim in limits)
    assert job.pbt.population * trial_gpus <= sum(n * lim.get("nvidia.com/gpu", 0) for n, lim in limits)


CPU_ONLY = {"limits": {"cpu": "1", "memory": "1Gi"}}
ENDPOINT_SECRET = "s3cr3t-in-the-endpoint"


def pools(*overrides: dict) -> tuple[str, str]:
    """--set-json for whole groups: `--set workerGroups[0].x=` would replace the list anyway."""
    base = {"groupName": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 1,
            "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1}}}
    return ("--set-json", "workerGroups=" + json.dumps([{**base, **override} for override in overrides]))


BAD_VALUES = {  # id: (release name, helm args, what stderr must say)
    "wrong type": (RELEASE, ("--set", "job.backoffLimit=many"), "'/job/backoffLimit': got string, want integer"),
    "unknown key": (RELEASE, ("--set", "storage.bucket=runs"), "at '/storage': additional properties 'bucket' not allowed"),
    "unknown group key": (RELEASE, pools({"gpus": 1}), "at '/workerGroups/0': additional properties 'gpus' not allowed"),
    "unknown head key": (RELEASE, ("--set", "head.cpu=2"), "at '/head': additional properties 'cpu' not allowed"),
    "removed extraEnv": (RELEASE, ("--set-json", "extraEnv=[]"), "additional properties 'extraEnv' not allowed"),
    "negative cpu": (
        RELEASE, pools({"resources": {"limits": {"cpu": "-1", "memory": "1Gi"}}}),
        "at '/workerGroups/0/resources/limits/cpu': '-1' does not match pattern",
    ),
    "negative memory": (
        RELEASE, ("--set", "head.resources.limits.memory=-1"), "at '/head/resources/limits/memory': minimum: got -1, want 0"
    ),
    "not a quantity": (
        RELEASE, ("--set", "head.resources.requests.cpu=two"), "at '/head/resources/requests/cpu': 'two' does not match pattern"
    ),
    "limits without memory": (
        RELEASE, pools({"resources": {"limits": {"cpu": "1"}}}), "at '/workerGroups/0/resources/limits': missing property 'memory'"
    ),
    "requests over limits": (
        RELEASE, ("--set", "head.resources.limits.cpu=1"),
        "head: resources.requests.cpu (2) is more than resources.limits.cpu (1); Helm merges your resources",
    ),
    "minReplicas > maxReplicas": (
        RELEASE, pools({"replicas": 2, "minReplicas": 3, "maxReplicas": 2}),
        'workerGroups "gpu": need minReplicas <= replicas <= maxReplicas, got 3 <= 2 <= 2',
    ),
    "replicas > maxReplicas": (RELEASE, pools({"replicas": 5, "maxReplicas": 4}), "got 0 <= 5 <= 4"),
    "maxReplicas 0": (
        RELEASE, pools({"replicas": 0, "maxReplicas": 0}), 'workerGroups "gpu": maxReplicas is 0, so the group never has a worker'
    ),
    "replicas 0 without autoscaling": (
        RELEASE, pools({"replicas": 0}), 'workerGroups "gpu": replicas is 0 and autoscaling is off'
    ),
    "duplicate group names": (RELEASE, pools({}, {}), 'workerGroups: the groupName "gpu" is used twice'),
    "GPU config on CPU groups only": (
        RELEASE, pools({"resources": CPU_ONLY}),
        "job.config asks for GPUs (resources.num_gpus_per_learner: 0.5) but no Ray group has one",
    ),
    "num-gpus without a GPU resource": (
        RELEASE, pools({"resources": CPU_ONLY, "rayStartParams": {"num-gpus": "1"}}),
        'workerGroups "gpu": rayStartParams num-gpus is "1" but resources.limits names no GPU resource',
    ),
    "object store over /dev/shm": (
        RELEASE, pools({"shmSize": "1Gi", "rayStartParams": {"object-store-memory": "2000000000"}}),
        'workerGroups "gpu": rayStartParams object-store-memory (2000000000 bytes) is larger than /dev/shm (1Gi)',
    ),
    "object store under Ray's minimum": (
        RELEASE, pools({"resources": {"limits": {"cpu": "1", "memory": "200Mi", "nvidia.com/gpu": 1}}}),
        "workerGroups \"gpu\": Ray's object store would get 50331648 bytes, below Ray's minimum of 75 MiB",
    ),
    **{
        f"metricsPort on Ray's {name} port": (
            RELEASE, ("--set", f"job.metricsPort={port}"), f"job.metricsPort {port} is Ray's {name} port on the head"
        )
        for name, port in {"metrics": 8080, "dashboard": 8265, "gcs-server": 6379, "client": 10001}.items()
    },
    "60-character release name": ("pbt-job-" + "x" * 52, (), "the length must not be longer than 53"),
    "release name over KubeRay's 47": ("pbt-job-" + "x" * 42, (), "has 50 characters, KubeRay allows at most 47"),
    "long fullnameOverride": (
        RELEASE, ("--set", "fullnameOverride=" + "p" * 48), "'/fullnameOverride': maxLength: got 48, want 47"
    ),
    "ttl without shutdown": (
        RELEASE, ("--set", "job.shutdownAfterJobFinishes=false"),
        "job.ttlSecondsAfterFinished (600) only applies with job.shutdownAfterJobFinishes: true",
    ),
    "half of the keys": (RELEASE, ("--set", "storage.accessKeyId=AKIAHALF"), "storage: set both accessKeyId and secretAccessKey"),
    "two kinds of credentials": (
        RELEASE, ("--set", "storage.existingSecret=team-s3", *STATIC_KEYS), 'set either existingSecret ("team-s3") or accessKeyId'
    ),
    "credentials in the endpoint": (
        RELEASE, ("--set", f"storage.endpoint=http://AKIAEND:{ENDPOINT_SECRET}@minio:9000"),
        'storage.endpoint "http://***@minio:9000" holds credentials',
    ),
    "queue label twice": (
        RELEASE, ("--set", r"kueue.queueName=a,job.labels.kueue\.x-k8s\.io/queue-name=b"),
        'job.labels sets kueue.x-k8s.io/queue-name ("b") and kueue.queueName is "a"; set only kueue.queueName',
    ),
    "alerts without the PodMonitor": (
        RELEASE, ("--set", "monitoring.podMonitor.enabled=false"),
        "monitoring.prometheusRule.enabled is true but monitoring.podMonitor.enabled is false",
    ),
    "stalled after 0 minutes": (
        RELEASE, ("--set", "monitoring.prometheusRule.stalledMinutes=0"),
        "'/monitoring/prometheusRule/stalledMinutes': minimum: got 0, want 1",
    ),
    "stalled after 2.5 minutes": (
        RELEASE, ("--set-json", "monitoring.prometheusRule.stalledMinutes=2.5"),
        "'/monitoring/prometheusRule/stalledMinutes': got number, want integer",
    ),
    "throughput fraction of 1": (
        RELEASE, ("--set", "monitoring.prometheusRule.throughputFraction=1"),
        "'/monitoring/prometheusRule/throughputFraction': exclusiveMaximum: got 1, want 1",
    ),
    "skipped fraction over 1": (
        RELEASE, ("--set-json", "monitoring.prometheusRule.skippedFraction=1.5"),
        "'/monitoring/prometheusRule/skippedFraction': maximum: got 1.5, want 1",
    ),
    "slow exploits at 0 s": (
        RELEASE, ("--set", "monitoring.prometheusRule.exploitSlowSeconds=0"),
        "'/monitoring/prometheusRule/exploitSlowSeconds': exclusiveMinimum: got 0, want 0",
    ),
    "kubernetesEvents.enabled not a boolean": (
        RELEASE, ("--set", "kubernetesEvents.enabled=maybe"), "'/kubernetesEvents/enabled': got string, want boolean"
    ),
    "unknown kubernetesEvents key": (
        RELEASE, ("--set", "kubernetesEvents.rbac=false"), "at '/kubernetesEvents': additional properties 'rbac' not allowed"
    ),
    "storage not on S3": (RELEASE, ("--set", "storage.uri=/data/runs"), "'/storage/uri': '/data/runs' does not match pattern"),
    "job.config as a mapping": (RELEASE, ("--set", "job.config.name=quick"), "'/job/config': got object, want string"),
    "job.config without name": (
        RELEASE, ("--set", "job.config=pbt: {population: 4}"), "job.config must set `name`"
    ),
    "job.config not YAML": (RELEASE, ("--set", "job.config=name: [quick"), "job.config is not a YAML mapping"),
    "rayStartParams not strings": (
        RELEASE, ("--set", "head.rayStartParams.num-cpus=0"), "'/head/rayStartParams/num-cpus': got number, want string"
    ),
}


@pytest.mark.parametrize(("release", "args", "message"), BAD_VALUES.values(), ids=BAD_VALUES)
def test_bad_values_fail_with_a_clear_message(release, args, message):
    proc = helm("template", release, str(CHART), *args)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr
    assert ENDPOINT_SECRET not in proc.stderr, "a refused value never shows a secret"


# --- Plain manifests, kind files, image -----------------------------------------------


HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by")


def test_plain_rayjob_is_the_chart_default():
    """k8s/rayjob.yaml is `kubectl apply`-able and is the chart's default render (the events Role and
    RoleBinding included), less Helm's own labels and the monitoring objects (which need
    prometheus-operator and Grafana)."""
    chart = {(doc["kind"], doc["metadata"]["name"]): copy.deepcopy(doc) for doc in documents("defaults")}
    plain = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents("k8s/rayjob.yaml")}
    for doc in chart.values():
        for label in HELM_ONLY_LABELS:
            del doc["metadata"]["labels"][label]
    assert {key: chart[key] for key in plain} == plain
    assert chart.keys() - plain.keys() == {
        ("PodMonitor", RELEASE), ("PrometheusRule", RELEASE), ("ConfigMap", f"{RELEASE}-dashboard")
    }


def test_kind_files_agree_with_each_other():
    """kind-values runs configs/quick.yaml on the labelled kind worker; the e2e script loads its image and reads its run."""
    values = yaml.safe_load((REPO / "k8s" / "kind-values.yaml").read_text())
    assert values["job"]["config"] == (REPO / "configs" / "quick.yaml").read_text()
    kind_config = yaml.safe_load((REPO / "k8s" / "kind-config.yaml").read_text())
    assert (kind_config["apiVersion"], kind_config["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    node_labels = [node.get("labels", {}) for node in kind_config["nodes"] if node["role"] == "worker"]
    for pool in values["workerGroups"]:
        assert any(pool["nodeSelector"].items() <= labels.items() for labels in node_labels), pool["groupName"]
    script_text = (REPO / "scripts" / "kind-e2e.sh").read_text()
    script = dict(re.findall(r'^readonly (\w+)="([^"]*)"$', script_text, re.MULTILINE))
    pods = ray_pods(only(documents("cpu-only"), "RayJob")).values()
    assert {pod["spec"]["containers"][0]["image"] for pod in pods} == {script["IMAGE"]}
    run_name = yaml.safe_load(values["job"]["config"])["name"]
    assert f"s3://{script['BUCKET']}/{script['RUN_PREFIX']}" == f"{values['storage']['uri']}/{run_name}/"
    assert script["RELEASE"] == RELEASE == only(documents("cpu-only"), "RayJob")["metadata"]["name"]


@pytest.mark.parametrize("check", [["bash", "-n"], [str(Path(sys.executable).parent / "shellcheck"), "--severity=style"]], ids=["bash-n", "shellcheck"])
def test_e2e_script_parses_and_passes_shellcheck(check):
    """The script cannot run here (no Docker); the shell and shellcheck read it."""
    proc = subprocess.run([*check, str(REPO / "scripts" / "kind-e2e.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_versions_follow_pyproject():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    assert values["rayVersion"] == RAY_PIN


def test_schema_defaults_are_the_values_defaults():
    """values.schema.json documents each value with its default; they must not drift apart."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, value, path: str) -> None:
        if "properties" in node and node.get("additionalProperties") is False:
            assert set(value) == set(node["properties"]), path
            for key, child in node["properties"].items():
                walk(child, value[key], f"{path}.{key}")
        else:
            assert node["default"] == value, path

    walk(schema, values, "values")


DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_dockerfile_base_image_has_the_pinned_ray_and_python():
    [base] = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d)(?P<minor>\d+)-\$\{RAY_VARIANT\}", base)
    assert match, base
    assert match["ray"] == RAY_PIN
    assert PYPROJECT["project"]["requires-python"] == f"=={match['py']}.{match['minor']}.*"
    assert re.search(r"^ARG RAY_VARIANT=gpu$", DOCKERFILE, re.MULTILINE)
    [user] = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    pod_user = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert user == f"{pod_user['runAsUser']}:{pod_user['runAsGroup']}" != "0:0", "the image's non-root user, numeric for runAsNonRoot"


def test_dockerfile_copies_only_existing_files_the_context_keeps():
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert {".venv", "runs", ".pytest_cache", ".hypothesis", "**/__pycache__"} <= set(ignored)
    copies = [line.split()[:-1] for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE)]
    sources = [src for words in copies for src in words if not src.startswith("--")]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src
