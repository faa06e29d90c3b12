package cluster

import (
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestEncryptionConfig_KMSv2ThenIdentity(t *testing.T) {
	out, err := EncryptionConfig("stowage", "unix:///var/run/stowage/kms.sock", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Resources  []struct {
			Resources []string `json:"resources"`
			Providers []struct {
				KMS *struct {
					APIVersion, Name, Endpoint, Timeout string
				} `json:"kms"`
				Identity *struct{} `json:"identity"`
			} `json:"providers"`
		} `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(out, &cfg); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if cfg.APIVersion != "apiserver.config.k8s.io/v1" || cfg.Kind != "EncryptionConfiguration" || len(cfg.Resources) != 1 {
		t.Fatalf("header or resources wrong:\n%s", out)
	}
	r := cfg.Resources[0]
	if len(r.Resources) != 1 || r.Resources[0] != "secrets" || len(r.Providers) != 2 {
		t.Fatalf("want secrets with two providers:\n%s", out)
	}
	k := r.Providers[0].KMS
	if k == nil || k.APIVersion != "v2" || k.Name != "stowage" || k.Endpoint != "unix:///var/run/stowage/kms.sock" || k.Timeout != "3s" {
		t.Fatalf("first provider is not the KMS v2 plugin:\n%s", out)
	}
	if r.Providers[1].Identity == nil || r.Providers[1].KMS != nil {
		t.Fatalf("second provider is not identity:\n%s", out)
	}
	if !strings.Contains(string(out), "identity: {}") {
		t.Fatalf("identity must render as an empty object:\n%s", out)
	}
}

func TestEncryptionConfig_BadInput(t *testing.T) {
	for _, tc := range []struct{ name, endpoint, want string }{
		{"", "unix:///k.sock", "name"},
		{"stowage", "/k.sock", "unix:///path"},
		{"stowage", "tcp://127.0.0.1:1", "unix:///path"},
	} {
		if _, err := EncryptionConfig(tc.name, tc.endpoint, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EncryptionConfig(%q, %q): %v, want an error mentioning %q", tc.name, tc.endpoint, err, tc.want)
		}
	}
}
