{{- define "featurewell.fullname" -}}
{{- printf "%s-featurewell" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "featurewell.selectorLabels" -}}
app.kubernetes.io/name: featurewell
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "featurewell.labels" -}}
{{ include "featurewell.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
