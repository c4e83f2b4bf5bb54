{{/* The chart name, or nameOverride. */}}
{{- define "capstan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name if it contains the
chart name, else "<release>-<chart>". Release "capstan" gives the names config/ uses.
*/}}
{{- define "capstan.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart name and version, for the helm.sh/chart label. */}}
{{- define "capstan.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "capstan.labels" -}}
helm.sh/chart: {{ include "capstan.chart" . }}
{{ include "capstan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capstan
{{- end }}

{{/* Labels that select the operator's pods (immutable once installed). */}}
{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "capstan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "capstan.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: the tag defaults to "v" + appVersion, as the release images are tagged. */}}
{{- define "capstan.image" -}}
{{- $tag := .Values.image.tag | default (printf "v%s" (trimPrefix "v" .Chart.AppVersion)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The webhook Service's name. */}}
{{- define "capstan.webhookServiceName" -}}
{{- printf "%s-webhook" (include "capstan.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "capstan.webhookCertSecret" -}}
{{- if .Values.webhook.certManager.enabled }}
{{- printf "%s-webhook-cert" (include "capstan.fullname" .) }}
{{- else }}
{{- required "webhook.certSecretName is required when webhook.certManager.enabled is false" .Values.webhook.certSecretName }}
{{- end }}
{{- end }}

{{/* Where controller-runtime reads the webhook's serving certificate. */}}
{{- define "capstan.webhookCertDir" -}}
/tmp/k8s-webhook-server/serving-certs
{{- end }}

{{/* The control-plane namespace: where the MeshControlPlane's spec.namespace installs istiod, and the only namespace the operator is granted Secrets in. */}}
{{- define "capstan.controlPlaneNamespace" -}}
{{- $ns := required "controlPlaneNamespace is required: the namespace of the mesh's control plane (MeshControlPlane spec.namespace)" .Values.controlPlaneNamespace }}
{{- if eq $ns .Release.Namespace }}
{{- fail (printf "controlPlaneNamespace %s is the release namespace, where the operator runs: the operator refuses a MeshControlPlane there; give the control plane a namespace of its own, such as istio-system" $ns) }}
{{- end }}
{{- if has $ns (list "kube-system" "kube-public" "kube-node-lease") }}
{{- fail (printf "controlPlaneNamespace %s is one of Kubernetes' own namespaces, which cannot hold the control plane; use a namespace of its own, such as istio-system" $ns) }}
{{- end }}
{{- $ns }}
{{- end }}
