{{/* Name of the chart, or nameOverride. */}}
{{- define "sidekey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects are named after it; "sidekey" for a release named sidekey. */}}
{{- define "sidekey.fullname" -}}
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

{{- define "sidekey.operatorName" -}}
{{- printf "%s-operator" (include "sidekey.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped names carry the namespace too, so two releases of one name in two namespaces do not collide. */}}
{{- define "sidekey.clusterName" -}}
{{- if eq .Release.Namespace .Release.Name }}
{{- include "sidekey.fullname" . }}
{{- else }}
{{- printf "%s-%s" (include "sidekey.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "sidekey.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "sidekey.fullname" .) }}
{{- end }}

{{- define "sidekey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidekey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "sidekey.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sidekey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* repository@digest, else repository:tag (the appVersion by default). */}}
{{- define "sidekey.image" -}}
{{- $image := index . 0 }}{{- $chart := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The base URL of the authorization endpoint's links. */}}
{{- define "sidekey.publicUrl" -}}
{{- if .Values.authorization.publicUrl }}
{{- .Values.authorization.publicUrl | trimSuffix "/" }}
{{- else if .Values.authorization.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.authorization.ingress.tlsSecretName "")) .Values.authorization.ingress.host }}
{{- else }}
{{- print "http://127.0.0.1:8090" }}
{{- end }}
{{- end }}

{{- define "sidekey.webhookPort" -}}9443{{- end }}
{{- define "sidekey.oauthPort" -}}8090{{- end }}
{{- define "sidekey.adminPort" -}}8080{{- end }}
