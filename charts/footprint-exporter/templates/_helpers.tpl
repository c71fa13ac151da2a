{{/*
The chart's name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "footprint-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the chart's objects: <release>-<chart>, or the release name when it already
contains the chart name.
*/}}
{{- define "footprint-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "footprint-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The DaemonSet of a node pool (list $ "cpu" or list $ "gpu"): <fullname>, or <fullname>-gpu.
*/}}
{{- define "footprint-exporter.daemonSetName" -}}
{{- $name := include "footprint-exporter.fullname" (index . 0) }}
{{- if eq (index . 1) "gpu" }}{{ $name = printf "%s-gpu" ($name | trunc 59 | trimSuffix "-") }}{{ end }}
{{- $name }}
{{- end }}

{{/*
The namespace of every namespaced object.
*/}}
{{- define "footprint-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a DaemonSet's selector is immutable).
*/}}
{{- define "footprint-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "footprint-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The pod label that tells the node pools' exporters apart (cpu or gpu); not part of the
selector labels, so the Service, the monitors and the NetworkPolicy select both pools.
*/}}
{{- define "footprint-exporter.poolLabel" -}}
footprint.dev/pool
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "footprint-exporter.labels" -}}
helm.sh/chart: {{ include "footprint-exporter.chart" . }}
{{ include "footprint-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: footprint
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "footprint-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "footprint-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: registry/repository, then @digest or :tag (default the appVersion).
*/}}
{{- define "footprint-exporter.image" -}}
{{- $repository := .Values.image.repository }}
{{- $registry := .Values.image.registry }}
{{- with .Values.global }}{{ with .imageRegistry }}{{ $registry = . }}{{ end }}{{ end }}
{{- if $registry }}
{{- $repository = printf "%s/%s" $registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Scheme of the metrics endpoint: https when an exporter-toolkit web config is in use.
*/}}
{{- define "footprint-exporter.scheme" -}}
{{- if .Values.webConfig.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
Where the pod-resources directory and the provider's credential are mounted.
*/}}
{{- define "footprint-exporter.podResourcesDir" -}}
/var/lib/kubelet/pod-resources
{{- end }}
{{- define "footprint-exporter.secretsDir" -}}
/etc/footprint/secrets
{{- end }}
{{- define "footprint-exporter.webConfigDir" -}}
/etc/footprint/web
{{- end }}

{{/*
Where the NVIDIA container toolkit looks for a device list given as volume mounts
(accept-nvidia-visible-devices-as-volume-mounts, gpu.injection=volume-mounts): each /dev/null
mounted under it names a device, `all` every GPU.
*/}}
{{- define "footprint-exporter.deviceListDir" -}}
/var/run/nvidia-container-devices
{{- end }}

{{/*
Whether the GPU exporter attributes GPUs claimed through DRA (gpu.dra): "true" or "".
*/}}
{{- define "footprint-exporter.draEnabled" -}}
{{- if and .Values.gpu.enabled .Values.gpu.dra.enabled }}true{{ end }}
{{- end }}

{{/*
The exporter's config file: .Values.config, with the pod-resources socket in the mounted
directory, the DRA drivers of gpu.dra (none unless gpu.enabled and gpu.dra.enabled) and, with
carbon.existingSecret, the live provider's credential file.
*/}}
{{- define "footprint-exporter.configFile" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $kubernetes := get $config "kubernetes" | default dict }}
{{- $_ := set $kubernetes "pod_resources_socket" (printf "%s/kubelet.sock" (include "footprint-exporter.podResourcesDir" .)) }}
{{- $draDrivers := list }}
{{- if include "footprint-exporter.draEnabled" . }}{{ $draDrivers = .Values.gpu.dra.drivers }}{{ end }}
{{- $_ = set $kubernetes "dra_drivers" $draDrivers }}
{{- /* The pod labels charged per value (footprint_chargeback_*): the rule pack's chargeback
keys, unless the config names its own. */}}
{{- if not (hasKey $kubernetes "chargeback_labels") }}
{{- $_ = set $kubernetes "chargeback_labels" ((.Values.prometheusRule.chargeback | default dict).labels | default list) }}
{{- end }}
{{- $_ = set $config "kubernetes" $kubernetes }}
{{- if .Values.carbon.existingSecret }}
{{- $carbon := get $config "carbon" | default dict }}
{{- $file := printf "%s/%s" (include "footprint-exporter.secretsDir" .) .Values.carbon.existingSecretKey }}
{{- $provider := get $carbon "provider" }}
{{- if eq $provider "electricitymaps" }}
{{- $settings := get $carbon "electricitymaps" | default dict }}
{{- if not (or (get $settings "token_file") (get $settings "token_env")) }}
{{- $_ = set $settings "token_file" $file }}
{{- end }}
{{- $_ = set $carbon "electricitymaps" $settings }}
{{- else if eq $provider "watttime" }}
{{- $settings := get $carbon "watttime" | default dict }}
{{- if not (or (get $settings "password_file") (get $settings "password_env")) }}
{{- $_ = set $settings "password_file" $file }}
{{- end }}
{{- $_ = set $carbon "watttime" $settings }}
{{- end }}
{{- $_ = set $config "carbon" $carbon }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Fails on combinations of values that cannot work.
*/}}
{{- define "footprint-exporter.validate" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled: choose one; both would scrape each exporter twice and double every sum" }}
{{- end }}
{{- if and .Values.webConfig.enabled (not .Values.webConfig.existingSecret) }}
{{- fail "webConfig.existingSecret: name the Secret holding web-config.yaml (and its TLS files) when webConfig.enabled" }}
{{- end }}
{{- if not (or .Values.cpu.enabled .Values.gpu.enabled) }}
{{- fail "cpu.enabled and gpu.enabled are both false: no DaemonSet would run; enable one" }}
{{- end }}
{{- if and .Values.gpu.enabled (not .Values.gpu.nodeSelector) .Values.cpu.enabled }}
{{- fail "gpu.nodeSelector is empty: it names the GPU nodes, which the CPU DaemonSet leaves out; set it, or cpu.enabled=false on a GPU-only cluster" }}
{{- end }}
{{- if not (has .Values.gpu.injection (list "env" "volume-mounts" "cdi")) }}
{{- fail (printf "gpu.injection is %q: choose env, volume-mounts or cdi (docs/install.md, GPUs through DRA)" (.Values.gpu.injection | default "" | toString)) }}
{{- end }}
{{- if ne .Values.gpu.injection "env" }}
{{- range .Values.gpu.env }}
{{- if eq (toString .name) "NVIDIA_VISIBLE_DEVICES" }}
{{- fail (printf "gpu.env sets NVIDIA_VISIBLE_DEVICES, which gpu.injection=%s does not take from there (the chart renders it from gpu.injection): remove it from gpu.env, or set gpu.injection=env" $.Values.gpu.injection) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
imagePullSecrets: global.imagePullSecrets, then imagePullSecrets; each a name or {name: ...}.
*/}}
{{- define "footprint-exporter.imagePullSecrets" -}}
{{- $secrets := list }}
{{- range concat ((.Values.global).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- $entry := . }}
{{- if kindIs "string" . }}{{ $entry = dict "name" . }}{{ end }}
{{- if not (has $entry $secrets) }}{{ $secrets = append $secrets $entry }}{{ end }}
{{- end }}
{{- with $secrets }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
A pod's affinity: a user's affinity (.affinity) with a required node affinity that also holds
the requirements .always (virtualNodeExclusion: both DaemonSets) and one of the lists
.alternatives (the CPU DaemonSet's exclusion of the GPU pool: one list per key of
gpu.nodeSelector, as the node lacks that label or has another value). The user's required
terms are ORed by Kubernetes, so each one gets them ANDed in (one term per alternative: their
cross product). Nothing to add: the user's affinity as it is.
*/}}
{{- define "footprint-exporter.mergedAffinity" -}}
{{- $affinity := deepCopy (.affinity | default dict) }}
{{- $always := .always | default list }}
{{- $alternatives := .alternatives | default (list list) }}
{{- $adds := len $always }}
{{- range $alternatives }}{{ $adds = add $adds (len .) }}{{ end }}
{{- if $adds }}
{{- $nodeAffinity := get $affinity "nodeAffinity" | default dict }}
{{- $required := get $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $userTerms := get $required "nodeSelectorTerms" | default (list dict) }}
{{- $terms := list }}
{{- range $term := $userTerms }}
{{- range $alternative := $alternatives }}
{{- $t := deepCopy $term }}
{{- $_ := set $t "matchExpressions" (concat (get $t "matchExpressions" | default list) $always $alternative) }}
{{- $terms = append $terms $t }}
{{- end }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $terms }}
{{- $_ = set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $nodeAffinity }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The CPU DaemonSet's affinity: .Values.affinity with virtualNodeExclusion and, when gpu.enabled,
the exclusion of the nodes gpu.nodeSelector selects (no node matches both DaemonSets).
*/}}
{{- define "footprint-exporter.cpuAffinity" -}}
{{- $alternatives := list list }}
{{- if .Values.gpu.enabled }}
{{- $alternatives = list }}
{{- range $key, $value := .Values.gpu.nodeSelector }}
{{- $alternatives = append $alternatives (list (dict "key" $key "operator" "NotIn" "values" (list (toString $value)))) }}
{{- end }}
{{- end }}
{{- if not $alternatives }}{{ $alternatives = list list }}{{ end }}
{{- include "footprint-exporter.mergedAffinity" (dict "affinity" .Values.affinity "always" .Values.virtualNodeExclusion "alternatives" $alternatives) }}
{{- end }}

{{/*
The GPU DaemonSet's affinity: gpu.affinity with virtualNodeExclusion.
*/}}
{{- define "footprint-exporter.gpuAffinity" -}}
{{- include "footprint-exporter.mergedAffinity" (dict "affinity" .Values.gpu.affinity "always" .Values.virtualNodeExclusion) }}
{{- end }}
