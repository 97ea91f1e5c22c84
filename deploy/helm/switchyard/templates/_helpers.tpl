{{- define "switchyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchyard.labels" -}}
{{ include "switchyard.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "switchyard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A restart when the shared configuration changes. */}}
{{- define "switchyard.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{- define "switchyard.secretEnv" -}}
{{- if .secret.name }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret.name }}
      key: {{ .secret.key }}
{{- end }}
{{- end -}}

{{/* Environment every component shares: where NATS is, with the
component's own user (`component`: broker, dispatcher or agent), logs as
JSON. */}}
{{- define "switchyard.env" -}}
{{- $nats := .root.Values.secrets.natsUrl }}
{{- if $nats.name }}
{{- include "switchyard.secretEnv" (dict "env" "SWITCHYARD_NATS__URL" "secret" (dict "name" $nats.name "key" (index $nats.keys .component))) }}
{{- else }}
- name: SWITCHYARD_NATS__URL
  value: nats://{{ .root.Release.Name }}-nats:4222
{{- end }}
- name: RUST_LOG
  value: info
{{- end -}}

{{- define "switchyard.configVolume" -}}
- name: config
  configMap:
    name: {{ include "switchyard.fullname" . }}-config
{{- end -}}

{{- define "switchyard.configMount" -}}
- name: config
  mountPath: /etc/switchyard
  readOnly: true
{{- end -}}

{{- define "switchyard.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
{{- end -}}

{{- define "switchyard.securityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end -}}
