{{- define "pss.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pss.fullname" -}}
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

{{- define "pss.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pss.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pss.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pss.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pss.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pss.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pss.secretName" -}}
{{- default (include "pss.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "pss.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Environment shared by the service and the migration Job. */}}
{{- define "pss.env" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: DATABASE_URL
- name: DATABASE_REPLICA_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: DATABASE_REPLICA_URL
      optional: true
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: REDIS_URL
- name: REDIS_SECONDARY_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: REDIS_SECONDARY_URL
      optional: true
- name: API_READ_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: API_READ_TOKENS
- name: API_WRITE_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: API_WRITE_TOKENS
- name: API_ADMIN_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ include "pss.secretName" . }}
      key: API_ADMIN_TOKENS
      optional: true
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container's `volumeMounts`, if `extraVolumeMounts` names any (at the indentation of a
     container's keys). */}}
{{- define "pss.volumeMounts" -}}
{{- with .Values.extraVolumeMounts }}
volumeMounts:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod's `volumes`, if `extraVolumes` names any (at the indentation of a pod spec's keys). */}}
{{- define "pss.volumes" -}}
{{- with .Values.extraVolumes }}
volumes:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Refuses to render with tokens that are empty or placeholders (the chart fails closed). */}}
{{- define "pss.checkSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- range $name, $tokens := dict "apiReadTokens" .Values.secrets.apiReadTokens "apiWriteTokens" .Values.secrets.apiWriteTokens -}}
{{- if not $tokens -}}
{{- fail (printf "secrets.%s is empty: set real tokens, or secrets.existingSecret" $name) -}}
{{- end -}}
{{- range splitList "," $tokens -}}
{{- if or (not (trim .)) (hasPrefix "change-me" (trim .)) -}}
{{- fail (printf "secrets.%s holds an empty token or a placeholder (change-me...): set real tokens" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with .Values.secrets.apiAdminTokens -}}
{{- range splitList "," . -}}
{{- if or (not (trim .)) (hasPrefix "change-me" (trim .)) -}}
{{- fail "secrets.apiAdminTokens holds an empty token or a placeholder (change-me...)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret the migration Job reads DATABASE_URL from. */}}
{{- define "pss.migrationSecretName" -}}
{{- if .Values.migrations.existingSecret -}}
{{- .Values.migrations.existingSecret -}}
{{- else if and .Values.secrets.existingSecret (not .Values.migrations.databaseUrl) -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-migrate" (include "pss.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Labels of one-off pods (migrations, warm-up, audit, tests): no Service, PDB or HPA
selects them, since they lack the service's name label. */}}
{{- define "pss.jobLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pss.name" .context }}-{{ .component }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- end -}}

{{/* The label matchers every alert expression selects the release's series with: those the
     chart's ServiceMonitor gives them, unless `prometheusRule.selector` says otherwise. */}}
{{- define "pss.alertMatchers" -}}
{{- .Values.prometheusRule.selector | default (printf "namespace=%q,release=%q" .Release.Namespace .Release.Name) -}}
{{- end -}}
