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

{{/* A pipeline's labels: the release's, plus the component (stream-<source>, materialize,
backfill) so its pods are selected apart from the servers'. Takes (list $ component). */}}
{{- define "featurewell.pipelineSelectorLabels" -}}
app.kubernetes.io/name: featurewell-pipeline
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "featurewell.pipelineLabels" -}}
{{- $ := index . 0 -}}
{{ include "featurewell.pipelineSelectorLabels" . }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $.Chart.Name $.Chart.Version }}
{{- end -}}

{{/* The pipelines' pod: settings from their ConfigMap, the Redis writer's password file, Redis
TLS, the repo and the offline store volume. Takes (list $ args); the caller adds the rest. */}}
{{- define "featurewell.pipelineContainer" -}}
{{- $ := index . 0 -}}
image: "{{ $.Values.image.repository }}:{{ $.Values.image.tag }}"
imagePullPolicy: {{ $.Values.image.pullPolicy }}
command: [featurewell]
args: {{- toYaml (index . 1) | nindent 2 }}
envFrom:
  - configMapRef: {name: {{ include "featurewell.fullname" $ }}-pipelines}
securityContext: {{- toYaml $.Values.securityContext | nindent 2 }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
  {{- if $.Values.offline.existingClaim }}
  - {name: offline, mountPath: {{ $.Values.offline.mountPath }}}
  {{- end }}
  {{- if $.Values.repo.files }}
  - {name: repo, mountPath: {{ $.Values.repo.mountPath }}, readOnly: true}
  {{- end }}
  {{- if and $.Values.redis.tls.enabled $.Values.redis.tls.existingSecret }}
  - {name: redis-tls, mountPath: /etc/featurewell/redis-tls, readOnly: true}
  {{- end }}
  {{- if $.Values.pipelines.redis.existingSecret }}
  - {name: redis-auth, mountPath: /etc/featurewell/redis-auth, readOnly: true}
  {{- end }}
{{- end -}}

{{- define "featurewell.pipelineVolumes" -}}
{{- $ := . -}}
- name: tmp
  emptyDir: {}
{{- if $.Values.offline.existingClaim }}
- name: offline
  persistentVolumeClaim: {claimName: {{ $.Values.offline.existingClaim }}}
{{- end }}
{{- if $.Values.repo.files }}
- name: repo
  configMap: {name: {{ include "featurewell.fullname" $ }}-repo}
{{- end }}
{{- if and $.Values.redis.tls.enabled $.Values.redis.tls.existingSecret }}
- name: redis-tls
  secret: {secretName: {{ $.Values.redis.tls.existingSecret }}, defaultMode: 0440}
{{- end }}
{{- if $.Values.pipelines.redis.existingSecret }}
# A whole-Secret volume (no subPath): a rotated password reaches the file, re-read at reconnect.
- name: redis-auth
  secret:
    secretName: {{ $.Values.pipelines.redis.existingSecret }}
    defaultMode: 0440
    items: [{key: {{ $.Values.pipelines.redis.passwordKey }}, path: password}]
{{- end }}
{{- end -}}

{{/* The pod spec fields every pipeline pod shares. */}}
{{- define "featurewell.pipelinePodCommon" -}}
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Redis TLS settings, for the servers' and the pipelines' ConfigMaps. */}}
{{- define "featurewell.redisTlsSettings" -}}
{{- if .Values.redis.tls.enabled }}
FEATUREWELL_REDIS_TLS: "true"
FEATUREWELL_REDIS_TLS_CHECK_HOSTNAME: {{ .Values.redis.tls.checkHostname | quote }}
{{- if .Values.redis.tls.existingSecret }}
FEATUREWELL_REDIS_TLS_CA_FILE: /etc/featurewell/redis-tls/ca.crt
{{- if .Values.redis.tls.clientCertificate }}
FEATUREWELL_REDIS_TLS_CERT_FILE: /etc/featurewell/redis-tls/tls.crt
FEATUREWELL_REDIS_TLS_KEY_FILE: /etc/featurewell/redis-tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A batch job's pod template. Takes (list $ component args). */}}
{{- define "featurewell.jobPod" -}}
{{- $ := index . 0 -}}
metadata:
  labels: {{- include "featurewell.pipelineLabels" (list $ (index . 1)) | nindent 4 }}
spec:
  restartPolicy: Never  # a failed run is a failed pod, counted (kube_job_status_failed)
  {{- include "featurewell.pipelinePodCommon" $ | nindent 2 }}
  containers:
    - name: {{ index . 1 }}
      {{- include "featurewell.pipelineContainer" (list $ (index . 2)) | nindent 6 }}
      resources: {{- toYaml $.Values.jobs.resources | nindent 8 }}
  volumes: {{- include "featurewell.pipelineVolumes" $ | nindent 4 }}
{{- end -}}
