{{/* Chart name, overridable. */}}
{{- define "callstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for every object. */}}
{{- define "callstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "callstream.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "callstream.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels shared by every object of the release. */}}
{{- define "callstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "callstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: callstream
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "worker"). */}}
{{- define "callstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "callstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "callstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "callstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Components in a fixed order, so rendering is deterministic. */}}
{{- define "callstream.componentNames" -}}
worker sinks queue intake ema
{{- end -}}

{{/* The tenant directory volume every pod mounts at /etc/callstream/tenants (a ConfigMap, or a Secret). */}}
{{- define "callstream.tenantDirectoryVolume" -}}
- name: tenant-directory
  {{- if eq .Values.tenantDirectory.source "secret" }}
  secret:
    secretName: {{ .Values.tenantDirectory.name }}
    items:
      - key: {{ .Values.tenantDirectory.key }}
        path: {{ .Values.tenantDirectory.key }}
  {{- else }}
  configMap:
    name: {{ .Values.tenantDirectory.name }}
    items:
      - key: {{ .Values.tenantDirectory.key }}
        path: {{ .Values.tenantDirectory.key }}
  {{- end }}
{{- end -}}
