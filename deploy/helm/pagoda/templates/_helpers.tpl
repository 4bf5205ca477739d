{{/* The release's resource name prefix. */}}
{{- define "pagoda.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource. app.kubernetes.io/name=pagoda is what deploy/prometheus/prometheus.yml keeps. */}}
{{- define "pagoda.labels" -}}
app.kubernetes.io/name: pagoda
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (engine or router): pass (list $ "engine"). */}}
{{- define "pagoda.selectorLabels" -}}
app.kubernetes.io/name: pagoda
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "pagoda.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{- define "pagoda.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret -}}{{ .Values.apiKey.existingSecret }}{{- else -}}{{ include "pagoda.fullname" . }}-api-key{{- end -}}
{{- end -}}

{{- define "pagoda.apiKeyEnabled" -}}
{{- if or .Values.apiKey.value .Values.apiKey.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* PAGODA_API_KEY from the Secret, when a key is configured (pagoda reads it when --api-key is not given). */}}
{{- define "pagoda.apiKeyEnv" -}}
{{- if include "pagoda.apiKeyEnabled" . }}
- name: PAGODA_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "pagoda.apiKeySecret" . }}
      key: {{ .Values.apiKey.secretKey }}
{{- end }}
{{- end -}}

{{- define "pagoda.modelCacheClaim" -}}
{{- if .Values.modelCache.existingClaim -}}{{ .Values.modelCache.existingClaim }}{{- else -}}{{ include "pagoda.fullname" . }}-model-cache{{- end -}}
{{- end -}}
