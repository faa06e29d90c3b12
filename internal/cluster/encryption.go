package cluster

import (
	"fmt"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// EncryptionConfig renders kube-apiserver's --encryption-provider-config:
// Secrets are written with the KMS v2 plugin at endpoint (unix:///path, the
// socket of `stowage kms-plugin`) under the provider name name; identity
// comes second so that Secrets written before encryption was turned on
// still read. timeout 0 is the apiserver's default (3s). `stowage up`
// writes it with the plugin it runs (Layout.EncryptionConfigFile).
func EncryptionConfig(name, endpoint string, timeout time.Duration) ([]byte, error) {
	if name == "" {
		return nil, fmt.Errorf("encryption config: the KMS provider needs a name")
	}
	if !strings.HasPrefix(endpoint, "unix://") {
		return nil, fmt.Errorf("encryption config: KMS endpoint %q is not unix:///path", endpoint)
	}
	kms := map[string]any{"apiVersion": "v2", "name": name, "endpoint": endpoint}
	if timeout > 0 {
		kms["timeout"] = timeout.String()
	}
	cfg := map[string]any{
		"apiVersion": "apiserver.config.k8s.io/v1",
		"kind":       "EncryptionConfiguration",
		"resources": []any{map[string]any{
			"resources": []string{"secrets"},
			"providers": []any{
				map[string]any{"kms": kms},
				map[string]any{"identity": map[string]any{}},
			},
		}},
	}
	return yaml.Marshal(cfg)
}
