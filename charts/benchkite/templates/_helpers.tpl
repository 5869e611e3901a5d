{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "benchkite.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
*/}}
{{- define "benchkite.fullname" -}}
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

{{- define "benchkite.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the controller's objects.
*/}}
{{- define "benchkite.labels" -}}
{{ include "benchkite.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Labels of objects that are not part of the controller (AgentPools, GpuNodes).
*/}}
{{- define "benchkite.commonLabels" -}}
helm.sh/chart: {{ include "benchkite.chart" . }}
app.kubernetes.io/name: {{ include "benchkite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: benchkite
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the controller pods.
*/}}
{{- define "benchkite.selectorLabels" -}}
app.kubernetes.io/name: {{ include "benchkite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "benchkite.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "benchkite.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "benchkite.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "benchkite.leaseName" -}}
{{- default (include "benchkite.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Whether the KernelJob controller runs: requested and an organization is set ("true" or "").
*/}}
{{- define "benchkite.kerneljob" -}}
{{- if and (has "kerneljob" .Values.controllers) .Values.buildkite.organization }}true{{ end }}
{{- end }}

{{- define "benchkite.fleet" -}}
{{- if has "fleet" .Values.controllers }}true{{ end }}
{{- end }}

{{/*
The controllers actually started, comma-separated.
*/}}
{{- define "benchkite.controllers" -}}
{{- $out := list }}
{{- if include "benchkite.fleet" . }}{{ $out = append $out "fleet" }}{{ end }}
{{- if include "benchkite.kerneljob" . }}{{ $out = append $out "kerneljob" }}{{ end }}
{{- join "," $out }}
{{- end }}

{{/*
Name of the Secret holding the Buildkite credentials ("" when there is none).
*/}}
{{- /* The Secret with the installation's result master key (see values resultSigning). */}}
{{- define "benchkite.resultKeySecretName" -}}
{{- .Values.resultSigning.existingSecret | default (printf "%s-result-key" (include "benchkite.fullname" .)) }}
{{- end }}

{{- /* Where the controller mounts the result master key Secret. */}}
{{- define "benchkite.resultKeyDir" -}}
/var/run/benchkite/result-master-key
{{- end }}

{{- define "benchkite.buildkiteSecretName" -}}
{{- $bk := .Values.buildkite }}
{{- if $bk.existingSecret }}
{{- $bk.existingSecret }}
{{- else if or $bk.apiToken $bk.webhookSecret $bk.agentMetricsToken }}
{{- printf "%s-buildkite" (include "benchkite.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The credentials as a dict file-name -> Secret key, only those that are configured.
*/}}
{{- define "benchkite.buildkiteCredentials" -}}
{{- $bk := .Values.buildkite }}
{{- $out := dict }}
{{- if $bk.existingSecret }}
{{- with $bk.existingSecretKeys.apiToken }}{{ $_ := set $out "api-token" . }}{{ end }}
{{- with $bk.existingSecretKeys.webhookSecret }}{{ $_ := set $out "webhook-secret" . }}{{ end }}
{{- with $bk.existingSecretKeys.agentMetricsToken }}{{ $_ := set $out "agent-metrics-token" . }}{{ end }}
{{- else }}
{{- if $bk.apiToken }}{{ $_ := set $out "api-token" "api-token" }}{{ end }}
{{- if $bk.webhookSecret }}{{ $_ := set $out "webhook-secret" "webhook-secret" }}{{ end }}
{{- if $bk.agentMetricsToken }}{{ $_ := set $out "agent-metrics-token" "agent-metrics-token" }}{{ end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "benchkite.credentialsDir" -}}
/var/run/secrets/benchkite/buildkite
{{- end }}

{{/*
Checks that no schema can express; fails rendering with a message naming the value.
*/}}
{{- define "benchkite.validate" -}}
{{- $bk := .Values.buildkite }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: several active controllers would act twice; enable leaderElection or set replicaCount: 1" (int .Values.replicaCount)) }}
{{- end }}
{{- if and $bk.organization (not $bk.existingSecret) (not $bk.apiToken) }}
{{- fail "buildkite.organization is set but there is no API token source: set buildkite.existingSecret (key buildkite.existingSecretKeys.apiToken) or buildkite.apiToken" }}
{{- end }}
{{- if and $bk.organization $bk.existingSecret (not $bk.existingSecretKeys.apiToken) }}
{{- fail "buildkite.existingSecret is set but buildkite.existingSecretKeys.apiToken is empty: name the Secret key holding the API token" }}
{{- end }}
{{- if and $bk.existingSecret (or $bk.apiToken $bk.webhookSecret $bk.agentMetricsToken) }}
{{- fail "buildkite.existingSecret and buildkite.apiToken/webhookSecret/agentMetricsToken are exclusive: keep the credentials in one place" }}
{{- end }}
{{- if not (include "benchkite.controllers" .) }}
{{- fail "no controller would run: controllers lists only kerneljob, which needs buildkite.organization" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.enabled needs ingress.host (the host Buildkite posts webhooks to)" }}
{{- end }}
{{- end }}

{{/*
The controller's flags as a JSON list of [flag, value, values key]. The values key names
the chart value behind a flag (for the extraArgs duplicate check).
*/}}
{{- define "benchkite.args" -}}
{{- $v := .Values }}
{{- $bk := $v.buildkite }}
{{- $a := list }}
{{- $a = append $a (list "--controllers" (include "benchkite.controllers" .) "controllers") }}
{{- $a = append $a (list "--http-addr" (printf "0.0.0.0:%d" (int64 $v.ports.http)) "ports.http") }}
{{- $a = append $a (list "--metrics-addr" (printf "0.0.0.0:%d" (int64 $v.ports.metrics)) "ports.metrics") }}
{{- $a = append $a (list "--log-format" $v.logFormat "logFormat") }}
{{- $a = append $a (list "--log-level" $v.logLevel "logLevel") }}
{{- $a = append $a (list "--leader-elect" (toString $v.leaderElection.enabled) "leaderElection.enabled") }}
{{- if $v.leaderElection.enabled }}
{{- $a = append $a (list "--leader-election-lease-name" (include "benchkite.leaseName" .) "leaderElection.leaseName") }}
{{- $a = append $a (list "--leader-election-lease-seconds" (toString (int64 $v.leaderElection.leaseDurationSeconds)) "leaderElection.leaseDurationSeconds") }}
{{- end }}
{{- $a = append $a (list "--discover-gpu-nodes" (toString $v.fleet.discoverGpuNodes) "fleet.discoverGpuNodes") }}
{{- $a = append $a (list "--discovery-grace-seconds" (toString (int64 $v.fleet.discoveryGraceSeconds)) "fleet.discoveryGraceSeconds") }}
{{- $a = append $a (list "--agent-image" $v.fleet.agentImage "fleet.agentImage") }}
{{- $a = append $a (list "--agent-grace-seconds" (toString (int64 $v.fleet.agentGraceSeconds)) "fleet.agentGraceSeconds") }}
{{- $a = append $a (list "--min-agent-memory-mib" (toString (int64 $v.fleet.minAgentMemoryMiB)) "fleet.minAgentMemoryMiB") }}
{{- $a = append $a (list "--write-concurrency" (toString (int64 $v.fleet.writeConcurrency)) "fleet.writeConcurrency") }}
{{- $a = append $a (list "--node-not-ready-toleration-seconds" (toString (int64 $v.fleet.nodeNotReadyTolerationSeconds)) "fleet.nodeNotReadyTolerationSeconds") }}
{{- $a = append $a (list "--node-headroom-cpu" (toString $v.fleet.nodeHeadroom.cpu) "fleet.nodeHeadroom.cpu") }}
{{- $a = append $a (list "--node-headroom-memory" (toString $v.fleet.nodeHeadroom.memory) "fleet.nodeHeadroom.memory") }}
{{- if $v.fleet.dra.enabled }}
{{- $a = append $a (list "--dra-driver" $v.fleet.dra.driver "fleet.dra.driver") }}
{{- end }}
{{- $a = append $a (list "--result-key-file" (printf "%s/%s" (include "benchkite.resultKeyDir" .) $v.resultSigning.existingSecretKey) "resultSigning.existingSecret") }}
{{- $a = append $a (list "--unsigned-results" $v.resultSigning.unsignedResults "resultSigning.unsignedResults") }}
{{- with $v.kernelJobs.watchNamespace }}
{{- $a = append $a (list "--namespace" . "kernelJobs.watchNamespace") }}
{{- end }}
{{- if $bk.organization }}
{{- $creds := include "benchkite.buildkiteCredentials" . | fromJson }}
{{- $dir := include "benchkite.credentialsDir" . }}
{{- $a = append $a (list "--buildkite-org" $bk.organization "buildkite.organization") }}
{{- $a = append $a (list "--buildkite-api-url" $bk.apiUrl "buildkite.apiUrl") }}
{{- $a = append $a (list "--buildkite-agent-api-url" $bk.agentApiUrl "buildkite.agentApiUrl") }}
{{- if $bk.pipeline }}
{{- $a = append $a (list "--buildkite-pipeline" $bk.pipeline "buildkite.pipeline") }}
{{- end }}
{{- if $bk.cluster }}
{{- $a = append $a (list "--buildkite-cluster" $bk.cluster "buildkite.cluster") }}
{{- end }}
{{- $a = append $a (list "--pipeline-repository" $bk.pipelineRepository "buildkite.pipelineRepository") }}
{{- $a = append $a (list "--pipeline-step-timeout-minutes" (toString (int64 $bk.stepTimeoutMinutes)) "buildkite.stepTimeoutMinutes") }}
{{- if $bk.pipelineTeams }}
{{- $a = append $a (list "--pipeline-teams" (join "," $bk.pipelineTeams) "buildkite.pipelineTeams") }}
{{- end }}
{{- $a = append $a (list "--buildkite-requests-per-minute" (toString (int64 $bk.requestsPerMinute)) "buildkite.requestsPerMinute") }}
{{- $a = append $a (list "--buildkite-graphql" (ternary "auto" "off" $bk.graphql.enabled) "buildkite.graphql.enabled") }}
{{- if $bk.graphql.enabled }}
{{- $a = append $a (list "--buildkite-graphql-url" $bk.graphql.url "buildkite.graphql.url") }}
{{- $a = append $a (list "--buildkite-graphql-share" (toString $bk.graphql.share) "buildkite.graphql.share") }}
{{- end }}
{{- if gt (int64 $bk.pollIntervalSeconds) 0 }}
{{- $a = append $a (list "--poll-interval-seconds" (toString (int64 $bk.pollIntervalSeconds)) "buildkite.pollIntervalSeconds") }}
{{- end }}
{{- $a = append $a (list "--instance" $bk.instance "buildkite.instance") }}
{{- $a = append $a (list "--max-source-bytes" (toString (int64 $v.kernelJobs.maxSourceBytes)) "kernelJobs.maxSourceBytes") }}
{{- $a = append $a (list "--finalizer-timeout-seconds" (toString (int64 $v.kernelJobs.finalizerTimeoutSeconds)) "kernelJobs.finalizerTimeoutSeconds") }}
{{- $a = append $a (list "--kerneljob-events" $v.kernelJobs.events "kernelJobs.events") }}
{{- $a = append $a (list "--stale-after-seconds" (toString (int64 $v.kernelJobs.staleAfterSeconds)) "kernelJobs.staleAfterSeconds") }}
{{- $a = append $a (list "--submit-workers" (toString (int64 $v.kernelJobs.submitWorkers)) "kernelJobs.submitWorkers") }}
{{- $t := $v.kernelJobs.tenancy }}
{{- $a = append $a (list "--allow-raw-queue" $t.rawQueue "kernelJobs.tenancy.rawQueue") }}
{{- $a = append $a (list "--allow-pipeline-override" $t.pipelineOverride "kernelJobs.tenancy.pipelineOverride") }}
{{- $a = append $a (list "--allow-branch-override" $t.branchOverride "kernelJobs.tenancy.branchOverride") }}
{{- $a = append $a (list "--allow-secret-sources" $t.secretSources "kernelJobs.tenancy.secretSources") }}
{{- if $t.envAllow }}
{{- $a = append $a (list "--kerneljob-env-allow" (join "," $t.envAllow) "kernelJobs.tenancy.envAllow") }}
{{- end }}
{{- if hasKey $creds "api-token" }}
{{- $a = append $a (list "--buildkite-token-file" (printf "%s/api-token" $dir) "buildkite.existingSecret/apiToken") }}
{{- end }}
{{- if hasKey $creds "webhook-secret" }}
{{- $a = append $a (list "--webhook-secret-file" (printf "%s/webhook-secret" $dir) "buildkite.existingSecretKeys.webhookSecret/webhookSecret") }}
{{- end }}
{{- if hasKey $creds "agent-metrics-token" }}
{{- $a = append $a (list "--agent-metrics-token-file" (printf "%s/agent-metrics-token" $dir) "buildkite.existingSecretKeys.agentMetricsToken/agentMetricsToken") }}
{{- end }}
{{- end }}
{{- range $v.extraArgs }}
{{- $flag := regexReplaceAll "=.*$" . "" }}
{{- range $a }}
{{- if eq (index . 0) $flag }}
{{- fail (printf "extraArgs: %s is already set by the chart from %s; change that value instead (the controller rejects repeated flags)" $flag (index . 2)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $a }}
{{- end }}
