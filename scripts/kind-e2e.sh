#!/usr/bin/env bash
# End-to-end run of helm/pbt-job on a local kind cluster with MinIO as S3:
#   1. creates the kind cluster of k8s/kind-config.yaml,
#   2. builds the CPU image (Dockerfile, RAY_VARIANT=cpu) and loads it into kind,
#   3. installs the KubeRay operator with Helm,
#   4. applies k8s/minio.yaml and waits for its bucket,
#   5. installs the chart with k8s/kind-values.yaml (the quick population of `make run`),
#   6. waits for jobDeploymentStatus=Complete, reading the pbt-job exporter on the head
#      and checking its memory-backed /dev/shm while the job runs,
#   7. checks the driver's Kubernetes Events on the RayJob (an Exploit at least, and JobFinished),
#   8. checks that checkpoints and lineage.jsonl are in the MinIO bucket.
#
# Needs a running Docker engine (about 6 CPUs and 12 GiB for it), kind, kubectl and helm
# (`make tools` puts kubectl and helm in .tools/bin) and the project's .venv (`make
# install`, for boto3). The test suite does not run it (no Docker engine there); it
# checks it with `bash -n`.
#
# Env: CLUSTER (pbt-job-e2e), NAMESPACE (pbt-job), TIMEOUT_S (1800, for the job),
#      KEEP_CLUSTER=1 to keep the cluster afterwards.
set -euo pipefail

readonly KUBERAY_VERSION="1.7.0"
readonly KUBERAY_REPO="https://ray-project.github.io/kuberay-helm/"
readonly IMAGE="pbt-job:0.1.0-cpu"
readonly RELEASE="pbt-job"
readonly BUCKET="pbt-job"
readonly RUN_PREFIX="runs/quick/"
readonly METRICS_PORT="9464"
readonly MINIO_LOCAL_PORT="19000"

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="${repo_root}/.tools/bin:${PATH}"
cluster="${CLUSTER:-pbt-job-e2e}"
namespace="${NAMESPACE:-pbt-job}"
timeout_s="${TIMEOUT_S:-1800}"
python="${repo_root}/.venv/bin/python"
context="kind-${cluster}"
port_forward_pid=""

log() { printf 'kind-e2e: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
k() { kubectl --context "${context}" --namespace "${namespace}" "$@"; }

cleanup() {
    if [[ -n "${port_forward_pid}" ]]; then
        kill "${port_forward_pid}" 2>/dev/null || true
    fi
    if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
        log "keeping cluster ${cluster} (kind delete cluster --name ${cluster})"
    else
        kind delete cluster --name "${cluster}" || true
    fi
}

head_pod() {
    local head
    head="$(k get pod -l "app.kubernetes.io/instance=${RELEASE},app.kubernetes.io/component=head" -o name)"
    head="${head%%$'\n'*}"
    [[ -n "${head}" ]] || return 1
    printf '%s\n' "${head}"
}

# The driver (and its exporter) runs in the head pod's ray-head container.
scrape_exporter() {
    local head metrics
    head="$(head_pod)" || return 1
    metrics="$(k exec "${head}" -c ray-head -- python -c \
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:${METRICS_PORT}/metrics', timeout=5).read().decode())" \
        2>/dev/null)" || return 1
    grep -q '^pbt_trial_iteration' <<<"${metrics}"
}

# /dev/shm is the chart's memory-backed emptyDir (shmSize), not the container's 64 MB.
check_shared_memory() {
    local head size_kib
    head="$(head_pod)" || die "no head pod to check /dev/shm on"
    size_kib="$(k exec "${head}" -c ray-head -- df --output=size -k /dev/shm | tail -n 1)"
    ((size_kib > 65536)) || die "/dev/shm on ${head} has ${size_kib} KiB, not the chart's shmSize"
    log "/dev/shm on the head: ${size_kib} KiB"
}

wait_for_job() {
    local status="" metrics_seen=0 deadline=$((SECONDS + timeout_s))
    while [[ "${status}" != Complete ]]; do
        ((SECONDS < deadline)) || die "RayJob ${RELEASE} not Complete after ${timeout_s} s (status '${status}')"
        sleep 10
        status="$(k get rayjob "${RELEASE}" -o jsonpath='{.status.jobDeploymentStatus}')"
        log "jobDeploymentStatus=${status:-<none>}"
        if [[ "${status}" == Failed ]]; then
            k describe rayjob "${RELEASE}" >&2
            die "RayJob ${RELEASE} failed: $(k get rayjob "${RELEASE}" -o jsonpath='{.status.reason}: {.status.message}')"
        fi
        if ((!metrics_seen)) && [[ "${status}" == Running ]] && scrape_exporter; then
            log "the exporter on the head answered on port ${METRICS_PORT}"
            metrics_seen=1
            check_shared_memory
        fi
    done
    local job_status
    job_status="$(k get rayjob "${RELEASE}" -o jsonpath='{.status.jobStatus}')"
    [[ "${job_status}" == SUCCEEDED ]] || die "the Ray job ended ${job_status}"
    ((metrics_seen)) || die "the pbt-job exporter never answered while the job ran"
}

# The driver posts an Exploit event on the RayJob for each exploit and JobFinished at the end
# (pbt_job/k8s_events.py), with the RayJob's uid, which `kubectl describe rayjob` matches.
check_events() {
    local uid selector exploits finished
    uid="$(k get rayjob "${RELEASE}" -o jsonpath='{.metadata.uid}')"
    selector="involvedObject.kind=RayJob,involvedObject.name=${RELEASE},involvedObject.uid=${uid}"
    k get events --field-selector "${selector}" --sort-by=.lastTimestamp >&2
    exploits="$(k get events --field-selector "${selector},reason=Exploit" -o name | wc -l)"
    finished="$(k get events --field-selector "${selector},reason=JobFinished" -o name | wc -l)"
    ((exploits >= 1)) || die "no Exploit event on RayJob ${RELEASE} (kubectl get events --field-selector ${selector})"
    ((finished >= 1)) || die "no JobFinished event on RayJob ${RELEASE}"
    log "RayJob ${RELEASE}: ${exploits} Exploit event(s) and JobFinished"
}

check_bucket() {
    local access_key secret_key
    access_key="$(k get secret minio-credentials -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)"
    secret_key="$(k get secret minio-credentials -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)"
    k port-forward svc/minio "${MINIO_LOCAL_PORT}:9000" >/dev/null 2>&1 &
    port_forward_pid=$!
    AWS_ENDPOINT_URL="http://127.0.0.1:${MINIO_LOCAL_PORT}" AWS_DEFAULT_REGION=us-east-1 \
        AWS_ACCESS_KEY_ID="${access_key}" AWS_SECRET_ACCESS_KEY="${secret_key}" \
        "${python}" - "${BUCKET}" "${RUN_PREFIX}" <<'PYEOF'
import sys
import time

import boto3
import botocore.exceptions

bucket, prefix = sys.argv[1:]
client = boto3.client("s3")
for attempt in range(30):  # the port-forward needs a moment
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        break
    except botocore.exceptions.EndpointConnectionError:
        time.sleep(1)
else:
    sys.exit(f"MinIO did not answer on {client.meta.endpoint_url}")
checkpoints = {key.rsplit("/checkpoint_", 1)[0] for key in keys if "/checkpoint_" in key}
print(f"s3://{bucket}/{prefix}: {len(keys)} objects, checkpoints of {len(checkpoints)} trials")
missing = [name for name in ("lineage.jsonl", "summary.json") if prefix + name not in keys]
if missing or not checkpoints:
    sys.exit(f"missing in s3://{bucket}/{prefix}: {', '.join(missing) or 'checkpoints'}")
PYEOF
}

main() {
    local tool
    for tool in docker kind kubectl helm; do
        command -v "${tool}" >/dev/null || die "${tool} not found (make tools installs helm and kubectl)"
    done
    [[ -x "${python}" ]] || die "${python} missing: run make install"
    docker info >/dev/null 2>&1 || die "no Docker engine answers"

    trap cleanup EXIT
    log "creating kind cluster ${cluster}"
    kind create cluster --name "${cluster}" --config "${repo_root}/k8s/kind-config.yaml" --wait 5m

    log "building ${IMAGE}"
    docker build --build-arg RAY_VARIANT=cpu --tag "${IMAGE}" "${repo_root}"
    kind load docker-image "${IMAGE}" --name "${cluster}"

    log "installing the KubeRay operator ${KUBERAY_VERSION}"
    helm upgrade --install kuberay-operator kuberay-operator --repo "${KUBERAY_REPO}" \
        --version "${KUBERAY_VERSION}" --kube-context "${context}" \
        --namespace kuberay-system --create-namespace --wait --timeout 5m

    log "starting MinIO in namespace ${namespace}"
    kubectl --context "${context}" create namespace "${namespace}"
    k apply -f "${repo_root}/k8s/minio.yaml"
    k wait --for=condition=complete job/minio-create-bucket --timeout=5m

    log "installing helm/pbt-job"
    helm upgrade --install "${RELEASE}" "${repo_root}/helm/pbt-job" --kube-context "${context}" \
        --namespace "${namespace}" --values "${repo_root}/k8s/kind-values.yaml"

    wait_for_job
    check_events
    check_bucket
    log "passed"
}

main "$@"
