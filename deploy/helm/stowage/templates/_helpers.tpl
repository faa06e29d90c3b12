{{/* name NAME: the release-scoped name of a component. */}}
{{- define "stowage.name" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stowage.labels" -}}
app.kubernetes.io/name: stowage
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "stowage.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* image KEY: registry/repository:tag of image.KEY. */}}
{{- define "stowage.image" -}}
{{- $i := index .root.Values.image .key -}}
{{- printf "%s/%s:%s" .root.Values.image.registry $i.repository $i.tag -}}
{{- end -}}

{{/* The Stowage API address the components dial. */}}
{{- define "stowage.api" -}}
{{- if .Values.server.external.address -}}
{{- .Values.server.external.address -}}
{{- else -}}
{{- printf "%s-server.%s.svc:%d" .Release.Name .Release.Namespace (int .Values.server.inCluster.port) -}}
{{- end -}}
{{- end -}}

{{/* The flag of a Stowage API client with apiTLS: the CA it trusts,
     key ca.crt of the tokens Secret, which every client mounts. */}}
{{- define "stowage.apiCA" -}}
{{- if .Values.apiTLS.enabled -}}
- --ca-file=/etc/stowage/tokens/ca.crt
{{- end -}}
{{- end -}}

{{/* The pod's own service-account token and the cluster's CA, mode 0400:
     Stowage refuses a token file others can read (the automounted one is
     0644). */}}
{{- define "stowage.kubeTokenVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 256 # 0400
    sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
{{- end -}}

{{- define "stowage.tokensVolume" -}}
- name: tokens
  secret:
    secretName: {{ .Values.server.tokensSecret }}
    defaultMode: 384 # 0600: the components refuse a token file others can read
{{- end -}}

{{- define "stowage.nodeNameEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{/* The node runner's socket, in the state directory the node plugins and the runner share (mounted at /var/lib/stowage in each). */}}
{{- define "stowage.nodeRunnerSocket" -}}
/var/lib/stowage/node-runner/runner.sock
{{- end -}}
