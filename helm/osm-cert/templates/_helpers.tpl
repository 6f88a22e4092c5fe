{{/*
Names. They are fixed, not derived from the release name: agents, the webhook and OSM find the
server by these names (CONTRACT.md), and the MutatingWebhookConfiguration is cluster-scoped, so
one release per cluster.
*/}}
{{- define "osm-cert.serverName" -}}osm-cert{{- end }}
{{- define "osm-cert.webhookName" -}}osm-cert-webhook{{- end }}
{{- define "osm-cert.webhookConfigName" -}}osm-cert-injector{{- end }}
{{- define "osm-cert.leaderLease" -}}osm-cert-leader{{- end }}

{{- define "osm-cert.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The image every command runs from. */}}
{{- define "osm-cert.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels every object carries. Call with (dict "ctx" $ "component" "server"). */}}
{{- define "osm-cert.labels" -}}
helm.sh/chart: {{ include "osm-cert.chart" .ctx }}
{{ include "osm-cert.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: osm
{{- end }}

{{/* The labels selectors use: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "osm-cert.selectorLabels" -}}
app.kubernetes.io/name: osm-cert
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The hardened container securityContext both Deployments use (DESIGN.md, issue 6). */}}
{{- define "osm-cert.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod-level securityContext: the same non-root identity, seccomp for any container added later. */}}
{{- define "osm-cert.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Vault's token comes only from an existing Secret: fail before anything is applied. */}}
{{- define "osm-cert.vaultChecks" -}}
{{- if .Values.vault.token }}
{{- fail "vault.token is not accepted: a token in values is stored in Helm's release record and shown by `helm get values`. Create a Secret (kubectl create secret generic osm-vault-token -n <namespace> --from-literal=token=...) and set vault.secret.name (and vault.secret.key)" }}
{{- end }}
{{- $_ := required "vault.secret.name is required with certificateProvider.kind=vault: the name of an existing Secret in the release namespace holding the Vault token (key vault.secret.key)" .Values.vault.secret.name }}
{{- $_ := required "vault.secret.key is required with certificateProvider.kind=vault: the key of the Vault token in vault.secret.name" .Values.vault.secret.key }}
{{- $_ := required "vault.host is required with certificateProvider.kind=vault" .Values.vault.host }}
{{- end }}
