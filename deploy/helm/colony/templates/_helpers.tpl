{{- define "colony.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "colony.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The NATS servers the nodes connect to: the chart's own, or `nats.url`. */}}
{{- define "colony.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $name := include "colony.fullname" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.servers) -}}
{{- $urls = append $urls (printf "nats://%s-nats-%d.%s-nats-headless.%s.svc:4222" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* Seconds of a duration written `30s` or `2m`. */}}
{{- define "colony.seconds" -}}
{{- if hasSuffix "m" . -}}
{{- mul (trimSuffix "m" . | int) 60 -}}
{{- else -}}
{{- trimSuffix "s" . | int -}}
{{- end -}}
{{- end -}}
