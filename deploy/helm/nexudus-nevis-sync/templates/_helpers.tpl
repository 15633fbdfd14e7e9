{{/*
A tenant's full name: <release>-<tenant>, at most 52 characters so that a CronJob's Job and Pod
names built from it stay within Kubernetes' limits. Called with (dict "root" $ "tenant" $t).
*/}}
{{- define "nns.fullname" -}}
{{- printf "%s-%s" .root.Release.Name .tenant.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The tenant merged over the chart's defaults (the tenant wins, key by key). */}}
{{- define "nns.tenant" -}}
{{- $t := deepCopy .tenant -}}
{{- $d := deepCopy .root.Values.defaults -}}
{{- toYaml (mergeOverwrite $d $t) -}}
{{- end -}}

{{/* Labels every object of a tenant carries; the selector labels are a subset. */}}
{{- define "nns.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
nexudus-nevis-sync/tenant: {{ .tenant.name }}
{{- end -}}

{{- define "nns.labels" -}}
{{ include "nns.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "nns.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if eq $tag "latest" -}}{{ fail "image.tag: \"latest\" is not allowed; use a version" }}{{- end -}}
{{- printf "%s:%s" .root.Values.image.repository $tag -}}
{{- end -}}

{{/*
httpAuth: where the daemon's bearer token is mounted (a volume of its own, key http-auth-token of
the tenant's authSecret), the file config.toml's http.auth_token_file names.
*/}}
{{- define "nns.authTokenDir" -}}/var/run/secrets/nexudus-nevis-sync-http-auth{{- end -}}
{{- define "nns.authTokenFile" -}}{{ include "nns.authTokenDir" . }}/token{{- end -}}

{{/*
The pod spec both modes share: today's hardening (deploy/kubernetes), the config, the tenant's
Secret and its own store.
*/}}
{{- define "nns.podSpec" -}}
{{- $t := .merged -}}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: 45
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: nexudus-nevis-sync
    image: {{ include "nns.image" . }}
    imagePullPolicy: {{ .root.Values.image.pullPolicy }}
    {{- if eq $t.mode "cronjob" }}
    args:
      - --sync-now
    {{- end }}
    env:
      - name: NEXUDUS_NEVIS_SYNC_CONFIG
        value: /etc/nexudus-nevis-sync/config.toml
    {{- if eq $t.mode "daemon" }}
    ports:
      - name: http
        containerPort: 9464
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: http
      initialDelaySeconds: 5
      periodSeconds: 10
      timeoutSeconds: 3
      failureThreshold: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: http
      periodSeconds: 15
      timeoutSeconds: 3
      failureThreshold: 2
    {{- end }}
    resources:
      {{- toYaml $t.resources | nindent 6 }}
    securityContext:
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop:
          - ALL
    volumeMounts:
      - name: config
        mountPath: /etc/nexudus-nevis-sync
        readOnly: true
      - name: secrets
        mountPath: /var/run/secrets/nexudus-nevis-sync
        readOnly: true
      - name: store
        mountPath: /var/lib/nexudus-nevis-sync
      {{- if .authSecret }}
      - name: http-auth
        mountPath: {{ include "nns.authTokenDir" . }}
        readOnly: true
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "nns.fullname" . }}
      items:
        - key: config.toml
          path: config.toml
  - name: secrets
    secret:
      secretName: {{ $t.existingSecret }}
      defaultMode: 0440
  - name: store
    persistentVolumeClaim:
      claimName: {{ include "nns.fullname" . }}-store
  {{- with .authSecret }}
  - name: http-auth
    secret:
      secretName: {{ . }}
      defaultMode: 0440
      items:
        - key: http-auth-token
          path: {{ base (include "nns.authTokenFile" $) }}
  {{- end }}
{{- end -}}

{{/*
The ext_id_prefix a tenant's config.toml leaves unset means: the binary's own default
(mapping.ext_id_prefix, docs/configuration.md). tests/helm.rs holds the two together.
*/}}
{{- define "nns.defaultExtIdPrefix" -}}nexudus-{{- end -}}

{{/*
Refuses two tenants that write into one nevisIDM client (the same base URL and clientExtId) with
the same mapping.ext_id_prefix, or one prefix being the other followed by digits: an extId is
<prefix><Nexudus Id>, so each tenant would take the other's users for its own and disable them
as vanished from its Nexudus account. An unset prefix is the binary's default: two tenants that
both leave it unset share it. Called with the root context.
*/}}
{{- define "nns.refuseSharedClients" -}}
{{- $byClient := dict -}}
{{- range $tenant := $.Values.tenants -}}
{{- $merged := include "nns.tenant" (dict "root" $ "tenant" $tenant) | fromYaml -}}
{{- $mapping := get ($merged.config | default dict) "mapping" | default dict -}}
{{- $prefix := get $mapping "ext_id_prefix" | default (include "nns.defaultExtIdPrefix" $) | toString -}}
{{- $base := $tenant.nevis.baseUrl | trimSuffix "/" | lower -}}
{{- $client := printf "%s clientExtId %q" $base $tenant.nevis.clientExtId -}}
{{- range $other := get $byClient $client | default list -}}
{{- $clash := or (and (hasPrefix $other.prefix $prefix) (regexMatch "^[0-9]*$" (trimPrefix $other.prefix $prefix))) (and (hasPrefix $prefix $other.prefix) (regexMatch "^[0-9]*$" (trimPrefix $prefix $other.prefix))) -}}
{{- if $clash -}}
{{- fail (printf "tenants %q and %q write into one nevisIDM client (%s) with ext_id_prefix %q and %q: each would take the other's users for its own and disable them. Give each tenant its own prefix (config.mapping.ext_id_prefix; unset is %q), one that is not the other's followed by digits" $other.name $tenant.name $client $other.prefix $prefix (include "nns.defaultExtIdPrefix" $)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $byClient $client (append (get $byClient $client | default list) (dict "name" $tenant.name "prefix" $prefix)) -}}
{{- end -}}
{{- end -}}
