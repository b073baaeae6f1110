{{/*
Chart name.
*/}}
{{- define "pbt-job.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the RayJob's name and the prefix of every object. Never truncated: KubeRay
refuses RayJob names over 47 characters or that are not DNS-1035 labels (it appends
suffixes for the RayCluster and its pods), so such a name fails here, showing the name.
*/}}
{{- define "pbt-job.fullname" -}}
{{- $name := .Values.fullnameOverride }}
{{- if not $name }}
{{- $chart := include "pbt-job.name" . }}
{{- $name = contains $chart .Release.Name | ternary .Release.Name (printf "%s-%s" .Release.Name $chart) }}
{{- end }}
{{- if gt (len $name) 47 }}
{{- fail (printf "the RayJob name %q has %d characters, KubeRay allows at most 47: choose a shorter release name or set fullnameOverride" $name (len $name)) }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "the RayJob name %q must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter): choose another release name or set fullnameOverride" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "pbt-job.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pbt-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pbt-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pbt-job.labels" -}}
helm.sh/chart: {{ include "pbt-job.chart" . }}
{{ include "pbt-job.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Image of a group: its own `image` override, else repository:tag (tag defaults to appVersion).
Call with (dict "root" $ "override" .image).
*/}}
{{- define "pbt-job.image" -}}
{{- $image := .root.Values.image }}
{{- .override | default (printf "%s:%s" $image.repository ($image.tag | default .root.Chart.AppVersion)) }}
{{- end }}

{{- define "pbt-job.storageSecretName" -}}
{{- .Values.storage.existingSecret | default (printf "%s-storage" (include "pbt-job.fullname" .)) }}
{{- end }}

{{- define "pbt-job.configMapName" -}}
{{- printf "%s-config" (include "pbt-job.fullname" .) }}
{{- end }}

{{/* Where the job config is mounted in the head pod, and the file the entrypoint reads. */}}
{{- define "pbt-job.configDir" -}}
/etc/pbt-job
{{- end }}

{{- define "pbt-job.entrypoint" -}}
pbt-job train --config {{ include "pbt-job.configDir" . }}/job.yaml --storage {{ .Values.storage.uri }} --metrics-port {{ .Values.job.metricsPort | int }} --resume auto
{{- end }}

{{/*
Environment of the head and every worker: trials write checkpoints to S3 from the
workers, the driver from the head. Credentials only through secretKeyRef.
*/}}
{{- define "pbt-job.env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "pbt-job.storageSecretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "pbt-job.storageSecretName" . }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_DEFAULT_REGION
  value: {{ .Values.storage.region | quote }}
{{- with .Values.storage.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Requests equal to limits (Guaranteed QoS): Ray sizes its CPUs, GPUs and memory from
the container, and a trial must not lose its node to a noisy neighbour mid-iteration.
Call with a group: a dict with cpu, memory and optionally gpus.
*/}}
{{- define "pbt-job.resources" -}}
{{- $amounts := dict "cpu" .cpu "memory" .memory }}
{{- if gt (.gpus | default 0 | int) 0 }}
{{- $_ := set $amounts "nvidia.com/gpu" (.gpus | int) }}
{{- end -}}
requests:
  {{- toYaml $amounts | nindent 2 }}
limits:
  {{- toYaml $amounts | nindent 2 }}
{{- end }}

{{/*
Checks that values.schema.json cannot express; each failure names the value and the fix.
*/}}
{{- define "pbt-job.validate" -}}
{{- $job := .Values.job }}
{{- $config := fromYaml .Values.job.config }}
{{- if hasKey $config "Error" }}
{{- fail (printf "job.config is not a YAML mapping: %s" $config.Error) }}
{{- end }}
{{- if not $config.name }}
{{- fail "job.config must set `name`: the run is stored under <storage.uri>/<name> and resumed from there" }}
{{- end }}
{{- if and $job.ttlSecondsAfterFinished (not $job.shutdownAfterJobFinishes) }}
{{- fail (printf "job.ttlSecondsAfterFinished (%v) only applies with job.shutdownAfterJobFinishes: true; set it to 0 or enable shutdownAfterJobFinishes" $job.ttlSecondsAfterFinished) }}
{{- end }}
{{- $storage := .Values.storage }}
{{- $keys := or $storage.accessKeyId $storage.secretAccessKey }}
{{- if and $storage.existingSecret $keys }}
{{- fail (printf "storage: set either existingSecret (%q) or accessKeyId/secretAccessKey, not both" $storage.existingSecret) }}
{{- end }}
{{- if not (or $storage.existingSecret (and $storage.accessKeyId $storage.secretAccessKey)) }}
{{- fail "storage: S3 credentials are missing; set storage.existingSecret (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or both storage.accessKeyId and storage.secretAccessKey" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.workerGroups }}
{{- if hasKey $seen .name }}
{{- fail (printf "workerGroups: the name %q is used twice; each pool needs its own name" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if not (and (le (int .minReplicas) (int .replicas)) (le (int .replicas) (int .maxReplicas))) }}
{{- fail (printf "workerGroups %q: need minReplicas <= replicas <= maxReplicas, got %d <= %d <= %d" .name (int .minReplicas) (int .replicas) (int .maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}
