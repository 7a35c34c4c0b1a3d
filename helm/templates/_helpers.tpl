{{/* The chart name, overridable. */}}
{{- define "sentinel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: object names and the default service account. */}}
{{- define "sentinel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sentinel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sentinel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sentinel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sentinel.labels" -}}
helm.sh/chart: {{ include "sentinel.chart" . }}
{{ include "sentinel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sentinel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sentinel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the SENTINEL_... variables come from: the user's, or the chart's own. */}}
{{- define "sentinel.secretName" -}}
{{- default (include "sentinel.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Where the Kafka CA bundle is mounted. */}}
{{- define "sentinel.kafkaCaDir" -}}/etc/sentinel/kafka-tls{{- end -}}

{{/* The SQLite data directory (also the image's working directory). */}}
{{- define "sentinel.dataDir" -}}/var/lib/sentinel{{- end -}}

{{/*
Sentinel's config.yaml: the `config` values with what the chart decides itself. The API must listen on every
interface on containerPort, or the probes and the Service cannot reach it; the database defaults to SQLite in
the pod's data directory (SENTINEL_DATABASE_URL from the Secret wins over it).
*/}}
{{- define "sentinel.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $api := default (dict) $config.api -}}
{{- $_ := set $api "host" "0.0.0.0" -}}
{{- $_ := set $api "port" (int .Values.containerPort) -}}
{{- $_ := set $config "api" $api -}}
{{- $_ := set $config "database_url" (printf "sqlite:///%s/sentinel.db" (include "sentinel.dataDir" .)) -}}
{{- $kafka := default (dict) $config.kafka -}}
{{- if and .Values.kafkaTls.caSecret (not $kafka.ssl_cafile) -}}
{{- $_ := set $kafka "ssl_cafile" (printf "%s/%s" (include "sentinel.kafkaCaDir" .) .Values.kafkaTls.caKey) -}}
{{- end -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Secret values are stored as JSON: the daemon parses each SENTINEL_... value as YAML, and a JSON string or list
parses back to exactly itself, whatever characters a password holds (`#`, `: `, a leading `[`, digits only).
*/}}
{{- define "sentinel.secretValue" -}}
{{- toJson . | b64enc -}}
{{- end -}}
