{{- define "skuflow.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skuflow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "skuflow.secretName" -}}
{{- default (printf "%s-credentials" (include "skuflow.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/*
The enabled components, each merged over .Values.defaults, as a YAML map
name (kebab-case) → settings. Use: {{- $components := include "skuflow.components" . | fromYaml }}
*/}}
{{- define "skuflow.components" -}}
{{- $out := dict -}}
{{- range $key, $comp := .Values.components -}}
{{- if $comp.enabled -}}
{{- $c := mergeOverwrite (deepCopy $.Values.defaults) (deepCopy $comp) -}}
{{- $_ := set $out ($key | kebabcase) $c -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "skuflow.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/*
S3 credentials of a component: from its own Secret (components.<name>.s3Secret, keys
aws-access-key-id and aws-secret-access-key) when set, else the chart's Secret, where they are
optional so that the pod's own identity (IRSA, Pod Identity) applies when no keys are given.
*/}}
{{- define "skuflow.awsEnv" -}}
{{- $own := .c.s3Secret -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: { secretKeyRef: { name: {{ default .secret $own }}, key: aws-access-key-id, optional: {{ not $own }} } }
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: { secretKeyRef: { name: {{ default .secret $own }}, key: aws-secret-access-key, optional: {{ not $own }} } }
{{- end -}}
