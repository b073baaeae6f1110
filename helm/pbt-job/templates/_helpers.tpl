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

{{/* The Secret the pods take S3 keys from; empty: no keys, the default AWS credential chain. */}}
{{- define "pbt-job.storageSecretName" -}}
{{- $storage := .Values.storage }}
{{- if $storage.existingSecret }}
{{- $storage.existingSecret }}
{{- else if $storage.accessKeyId }}
{{- printf "%s-storage" (include "pbt-job.fullname" .) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of the Ray pods; empty: the namespace's default. */}}
{{- define "pbt-job.serviceAccountName" -}}
{{- $account := .Values.serviceAccount }}
{{- if $account.create }}
{{- $account.name | default (include "pbt-job.fullname" .) }}
{{- else }}
{{- $account.name }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the head pod (and the driver on it) runs as, "default" included. */}}
{{- define "pbt-job.headServiceAccountName" -}}
{{- .Values.head.serviceAccountName | default (include "pbt-job.serviceAccountName" .) | default "default" }}
{{- end }}

{{- define "pbt-job.configMapName" -}}
{{- printf "%s-config" (include "pbt-job.fullname" .) }}
{{- end }}

{{/* Label selector of the head pod, where the driver, its log and its exporter are. */}}
{{- define "pbt-job.headSelector" -}}
{{- printf "app.kubernetes.io/instance=%s,app.kubernetes.io/component=head" .Release.Name }}
{{- end }}

{{/* The run folder: <storage.uri>/<job.config name>. */}}
{{- define "pbt-job.runUri" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.storage.uri) (fromYaml .Values.job.config).name }}
{{- end }}

{{/* Where the job config is mounted in the head pod, and the file the entrypoint reads. */}}
{{- define "pbt-job.configDir" -}}
/etc/pbt-job
{{- end }}

{{- define "pbt-job.entrypoint" -}}
pbt-job train --config {{ include "pbt-job.configDir" . }}/job.yaml --storage {{ .Values.storage.uri }} --metrics-port {{ .Values.job.metricsPort | int }} --resume auto
{{- end }}

{{/* Ports of the Ray head container (name: port); job.metricsPort must be none of them. */}}
{{- define "pbt-job.headPorts" -}}
gcs-server: 6379
dashboard: 8265
client: 10001
metrics: 8080
{{- end }}

{{/*
Environment of the head and every worker, as a YAML list: trials write checkpoints to
S3 from the workers, the driver from the head. Keys only through secretKeyRef; without
a Secret the default AWS credential chain finds them (a web identity token, an instance role).
*/}}
{{- define "pbt-job.env" -}}
{{- $env := list }}
{{- with include "pbt-job.storageSecretName" . }}
{{- $secret := . }}
{{- range $key := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
{{- $env = append $env (dict "name" $key "valueFrom" (dict "secretKeyRef" (dict "name" $secret "key" $key))) }}
{{- end }}
{{- end }}
{{- $env = append $env (dict "name" "AWS_DEFAULT_REGION" "value" .Values.storage.region) }}
{{- with .Values.storage.endpoint }}
{{- $env = append $env (dict "name" "AWS_ENDPOINT_URL" "value" .) }}
{{- end }}
{{- concat $env .Values.common.containerEnv | toYaml }}
{{- end }}

{{/*
The number a Kubernetes quantity stands for ("40Gi", "500m", "1e9", 512), as a string.
*/}}
{{- define "pbt-job.quantity" -}}
{{- $text := toString . }}
{{- $number := regexFind "^[0-9.]+" $text }}
{{- $units := dict "" 1 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- $suffix := trimPrefix $number $text }}
{{- hasKey $units $suffix | ternary (mulf (float64 $number) (get $units $suffix)) (float64 $text) | toString }}
{{- end }}

{{/*
/dev/shm size of a group: its shmSize, else 30% of its memory limit (Ray's default share
of memory for its object store), in MiB. Call with a group.
*/}}
{{- define "pbt-job.shmSize" -}}
{{- if .shmSize }}
{{- .shmSize }}
{{- else }}
{{- $memory := include "pbt-job.quantity" .resources.limits.memory | float64 }}
{{- printf "%.0fMi" (divf (mulf $memory 0.3) 1048576 | floor) }}
{{- end }}
{{- end }}

{{/*
`ray start` parameters of a group: its own, plus an object store of 80% of /dev/shm
(Ray falls back to a slow disk-backed store when the object store exceeds /dev/shm; NCCL
and PyTorch use the rest) unless the group sets object-store-memory itself.
*/}}
{{- define "pbt-job.rayStartParams" -}}
{{- $shm := include "pbt-job.shmSize" . | include "pbt-job.quantity" | float64 }}
{{- $objectStore := mulf $shm 0.8 | floor | printf "%.0f" }}
{{- merge (dict) (.rayStartParams | default dict) (dict "object-store-memory" $objectStore) | toYaml }}
{{- end }}

{{/*
GPUs Ray sees in a group, as KubeRay counts them: rayStartParams num-gpus, else every
resources.limits entry whose name ends in "gpu". Call with a group.
*/}}
{{- define "pbt-job.rayGpus" -}}
{{- $gpus := 0.0 }}
{{- range $name, $amount := .resources.limits }}
{{- if hasSuffix "gpu" $name }}
{{- $gpus = addf $gpus $amount }}
{{- end }}
{{- end }}
{{- dig "num-gpus" $gpus (.rayStartParams | default dict) | float64 }}
{{- end }}

{{/*
Pod template of a Ray group: its container, /dev/shm and the group's KubeRay-style values.
Call with (dict "root" $ "group" <head or a worker group> "component" "head"|"worker").
*/}}
{{- define "pbt-job.podTemplate" -}}
{{- $root := .root }}
{{- $group := .group }}
{{- $isHead := eq .component "head" }}
{{- $labels := include "pbt-job.selectorLabels" $root | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" .component }}
{{- $tolerations := $group.tolerations }}
{{- if and (not $tolerations) (gt (include "pbt-job.rayGpus" $group | float64) 0.0) }}
{{- $tolerations = $root.Values.gpuTolerations }}
{{- end -}}
metadata:
  labels:
    {{- merge $labels ($group.labels | default dict) | toYaml | nindent 4 }}
  {{- with $group.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $group.serviceAccountName | default (include "pbt-job.serviceAccountName" $root) }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with $group.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.image.pullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .component }}
      image: {{ include "pbt-job.image" (dict "root" $root "override" $group.image) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if $isHead }}
        {{- range $name, $port := include "pbt-job.headPorts" $root | fromYaml }}
        - {name: {{ $name }}, containerPort: {{ $port }}}
        {{- end }}
        - {name: pbt-metrics, containerPort: {{ $root.Values.job.metricsPort | int }}}
        {{- else }}
        - {name: metrics, containerPort: 8080}
        {{- end }}
      {{- $env := include "pbt-job.env" $root | fromYamlArray }}
      {{- if and $isHead $root.Values.kubernetesEvents.enabled }}
      {{- /* The RayJob the driver posts its events on (pbt_job/k8s_events.py). */}}
      {{- $env = append $env (dict "name" "PBT_JOB_RAYJOB_NAME" "value" (include "pbt-job.fullname" $root)) }}
      {{- end }}
      {{- $env = concat $env ($group.containerEnv | default list) }}
      {{- if and $isHead $root.Values.autoscaling.enabled }}
      {{- /* Tune creates a placement group for every trial up front, so the autoscaler
      sees the whole population's demand (4 is pbt-job's default population). */}}
      {{- $population := dig "pbt" "population" 4 (fromYaml $root.Values.job.config) | int | toString }}
      {{- $env = append $env (dict "name" "TUNE_MAX_PENDING_TRIALS_PG" "value" $population) }}
      {{- end }}
      env:
        {{- toYaml $env | nindent 8 }}
      {{- with $group.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $group.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: shared-memory
          mountPath: /dev/shm
        {{- if $isHead }}
        - name: job-config
          mountPath: {{ include "pbt-job.configDir" $root }}
          readOnly: true
        {{- end }}
        {{- with $group.volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    # Ray's object store lives in /dev/shm; the container default is 64 MB.
    - name: shared-memory
      emptyDir:
        medium: Memory
        sizeLimit: {{ include "pbt-job.shmSize" $group }}
    {{- if $isHead }}
    - name: job-config
      configMap:
        name: {{ include "pbt-job.configMapName" $root }}
    {{- end }}
    {{- with $group.volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
Checks of one Ray group. Call with (dict "group" <group> "where" <how messages name it>).
*/}}
{{- define "pbt-job.validateGroup" -}}
{{- $group := .group }}
{{- $params := $group.rayStartParams | default dict }}
{{- $requested := dig "num-gpus" "" $params }}
{{- if and $requested (gt (float64 $requested) 0.0) }}
{{- if not (without (keys $group.resources.limits) "cpu" "memory" "ephemeral-storage") }}
{{- fail (printf "%s: rayStartParams num-gpus is %q but resources.limits names no GPU resource, so the pod gets no GPU; add one to requests and limits (e.g. nvidia.com/gpu: %s) or remove num-gpus" .where $requested $requested) }}
{{- end }}
{{- end }}
{{- range $name, $request := $group.resources.requests }}
{{- $limit := get $group.resources.limits $name }}
{{- if and $limit (gt (include "pbt-job.quantity" $request | float64) (include "pbt-job.quantity" $limit | float64)) }}
{{- fail (printf "%s: resources.requests.%s (%v) is more than resources.limits.%s (%v); Helm merges your resources into the defaults, so set requests and limits together" $.where $name $request $name $limit) }}
{{- end }}
{{- end }}
{{- $shm := include "pbt-job.shmSize" $group }}
{{- $store := get (include "pbt-job.rayStartParams" $group | fromYaml) "object-store-memory" }}
{{- if gt (float64 $store) (include "pbt-job.quantity" $shm | float64) }}
{{- fail (printf "%s: rayStartParams object-store-memory (%s bytes) is larger than /dev/shm (%s), so Ray would fall back to a disk-backed object store; raise shmSize or lower object-store-memory" .where $store $shm) }}
{{- end }}
{{- if lt (float64 $store) 78643200.0 }}
{{- fail (printf "%s: Ray's object store would get %s bytes, below Ray's minimum of 75 MiB (78643200); raise resources.limits.memory or shmSize, or set rayStartParams object-store-memory" .where $store) }}
{{- end }}
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
{{- range $name, $port := include "pbt-job.headPorts" . | fromYaml }}
{{- if eq (int $port) (int $job.metricsPort) }}
{{- fail (printf "job.metricsPort %d is Ray's %s port on the head; choose another port (default 9464)" (int $port) $name) }}
{{- end }}
{{- end }}
{{- with index $job.labels "kueue.x-k8s.io/queue-name" }}
{{- if $.Values.kueue.queueName }}
{{- fail (printf "job.labels sets kueue.x-k8s.io/queue-name (%q) and kueue.queueName is %q; set only kueue.queueName" . $.Values.kueue.queueName) }}
{{- end }}
{{- end }}
{{- $storage := .Values.storage }}
{{- if and $storage.existingSecret (or $storage.accessKeyId $storage.secretAccessKey) }}
{{- fail (printf "storage: set either existingSecret (%q) or accessKeyId/secretAccessKey, not both" $storage.existingSecret) }}
{{- end }}
{{- if ne (empty $storage.accessKeyId) (empty $storage.secretAccessKey) }}
{{- fail "storage: set both accessKeyId and secretAccessKey, or neither (then storage.existingSecret or the default AWS credential chain through serviceAccount)" }}
{{- end }}
{{- if regexMatch "^[a-zA-Z]+://[^/]*@" $storage.endpoint }}
{{- fail (printf "storage.endpoint %q holds credentials, which would stand in plain text in the RayJob; remove the user:password@ part and give them as storage.existingSecret or storage.accessKeyId/secretAccessKey" (regexReplaceAll "://[^/]*@" $storage.endpoint "://***@")) }}
{{- end }}
{{- include "pbt-job.validateGroup" (dict "group" .Values.head "where" "head") }}
{{- $gpuGroups := list }}
{{- if gt (include "pbt-job.rayGpus" .Values.head | float64) 0.0 }}
{{- $gpuGroups = append $gpuGroups "head" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.workerGroups }}
{{- $where := printf "workerGroups %q" .groupName }}
{{- if hasKey $seen .groupName }}
{{- fail (printf "workerGroups: the groupName %q is used twice; each group needs its own name" .groupName) }}
{{- end }}
{{- $_ := set $seen .groupName true }}
{{- if not (and (le (int .minReplicas) (int .replicas)) (le (int .replicas) (int .maxReplicas))) }}
{{- fail (printf "%s: need minReplicas <= replicas <= maxReplicas, got %d <= %d <= %d" $where (int .minReplicas) (int .replicas) (int .maxReplicas)) }}
{{- end }}
{{- if eq (int .maxReplicas) 0 }}
{{- fail (printf "%s: maxReplicas is 0, so the group never has a worker; raise maxReplicas or remove the group" $where) }}
{{- end }}
{{- if and (eq (int .replicas) 0) (not $.Values.autoscaling.enabled) }}
{{- fail (printf "%s: replicas is 0 and autoscaling is off, so the group never has a worker and trials waiting for it wait forever; set replicas >= 1 or autoscaling.enabled=true" $where) }}
{{- end }}
{{- include "pbt-job.validateGroup" (dict "group" . "where" $where) }}
{{- if gt (include "pbt-job.rayGpus" . | float64) 0.0 }}
{{- $gpuGroups = append $gpuGroups .groupName }}
{{- end }}
{{- end }}
{{- $learnerGpus := dig "resources" "num_gpus_per_learner" 0 $config }}
{{- if and (gt (float64 $learnerGpus) 0.0) (not $gpuGroups) }}
{{- fail (printf "job.config asks for GPUs (resources.num_gpus_per_learner: %v) but no Ray group has one, so the trials would wait forever; give a worker group a GPU (resources.limits nvidia.com/gpu: 1) or set num_gpus_per_learner: 0" $learnerGpus) }}
{{- end }}
{{- end }}
