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


{{/* The name the TLS probe expects in the server's certificate. */}}
{{- define "featurewell.tlsServerName" -}}
{{- .Values.tls.serverName | default (printf "%s.%s.svc" (include "featurewell.fullname" .) .Release.Namespace) -}}
{{- end -}}

{{/* `featurewell probe` over TLS (mTLS: with the pod's own certificate), for exec probes.
Takes a list: the root context and the health service name ("" for the whole server). */}}
{{- define "featurewell.tlsProbe" -}}
{{- $ := index . 0 -}}
exec:
  command:
    - featurewell
    - probe
    - --address=127.0.0.1:{{ $.Values.grpcPort }}
    - --service={{ index . 1 }}
    - --ca-file=/etc/featurewell/tls/ca.crt
    - --server-name={{ include "featurewell.tlsServerName" $ }}
    {{- if $.Values.tls.clientAuth }}
    - --cert-file=/etc/featurewell/tls/tls.crt
    - --key-file=/etc/featurewell/tls/tls.key
    {{- end }}
{{- end -}}
