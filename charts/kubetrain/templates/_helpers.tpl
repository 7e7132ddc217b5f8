{{/* Names and labels shared by every template. */}}

{{- define "kubetrain.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: the release name alone when it already says "kubetrain". */}}
{{- define "kubetrain.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetrain.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubetrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetrain
{{- end -}}

{{- define "kubetrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetrain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces whose TrainingJobs the operator reconciles: watch.namespaces, or the
release's own namespace when the list is empty. Only used when watch.allNamespaces is false.
*/}}
{{- define "kubetrain.watchedNamespaces" -}}
{{- if and .Values.watch.allNamespaces .Values.watch.namespaces -}}
{{- fail "watch.namespaces lists namespaces but watch.allNamespaces is true: set watch.allNamespaces=false to watch only those" -}}
{{- else if .Values.watch.namespaces -}}
{{- toJson (uniq .Values.watch.namespaces) -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Where the models PVC is created: storage.namespaces, else the watched namespaces. */}}
{{- define "kubetrain.storageNamespaces" -}}
{{- if .Values.storage.namespaces -}}
{{- toJson (uniq .Values.storage.namespaces) -}}
{{- else if .Values.watch.allNamespaces -}}
{{- toJson (list .Release.Namespace) -}}
{{- else -}}
{{- include "kubetrain.watchedNamespaces" . -}}
{{- end -}}
{{- end -}}

{{/*
The spec.storage of jobs that name none, as JSON: jobDefaults.storage, else the chart's claim.
*/}}
{{- define "kubetrain.jobStorage" -}}
{{- if .Values.jobDefaults.storage -}}
{{- toJson .Values.jobDefaults.storage -}}
{{- else if .Values.storage.create -}}
{{- toJson (dict "claimName" .Values.storage.claimName) -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{- define "kubetrain.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
What the operator does to the objects of one namespace (or of all of them, through a
ClusterRole). Derived from the API calls in kubetrain.operator and kopf; nothing more.
*/}}
{{- define "kubetrain.operatorRules" -}}
# kopf lists and watches TrainingJobs, and patches away the kubetrain.io/operator finalizer
# that the timer-driven operator added (no handler needs one now); each reconcile reads its
# job fresh; the operator deletes a finished job after ttlSecondsAfterFinished, and creates
# and deletes the trial jobs of a job with spec.trials.
- apiGroups: ["kubetrain.io"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Status is written through the status subresource only.
- apiGroups: ["kubetrain.io"]
  resources: ["trainingjobs/status"]
  verbs: ["patch"]
# Worker pods carry an owner reference with blockOwnerDeletion; clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin require this to set it.
- apiGroups: ["kubetrain.io"]
  resources: ["trainingjobs/finalizers"]
  verbs: ["update"]
# Worker pods: one watch feeds kopf's index and wakes their job, a list confirms a pod is gone,
# created per attempt and deleted on restart and cleanup. A job's model-check pod is
# created, read back for its answer and deleted before promotion.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Progress comes from the chief's last log lines (workers get no API token).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The headless Service of a job's workers, the Service of a serving Deployment, and a job's
# TensorBoard Service (spec.tensorboard; deleted when the job turns it off).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "delete"]
# The serving Deployment: read for the served metric, created on the first promotion,
# patched to roll a new version, deleted if it never served anything. A job's TensorBoard
# Deployment: created and deleted like its Service.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
# The NetworkPolicies of a job's workers and TensorBoard (owned by the job) and of a serving
# Deployment.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "delete"]
# The serving Deployment's PodDisruptionBudget, and its HorizontalPodAutoscaler when the job
# asks for autoscaling: made with the Deployment, removed with one that never served.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "delete"]
# A job waits (ClaimNotFound) until the PVCs it names exist.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
