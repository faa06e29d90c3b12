package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// controllerManagerMetrics is the kube-controller-manager's /metrics, read
// with the admin's client certificate (the controller manager authorizes
// it through the API server). Its serving certificate is self-signed.
func controllerManagerMetrics(t *testing.T) string {
	t.Helper()
	cfg := rest.CopyConfig(restCfg)
	cfg.TLSClientConfig.Insecure = true
	cfg.TLSClientConfig.CAData, cfg.TLSClientConfig.CAFile = nil, ""
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get("https://127.0.0.1:10257/metrics")
	if err != nil {
		t.Fatalf("controller-manager metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("controller-manager metrics: HTTP %d, %v: %.300s", resp.StatusCode, err, b)
	}
	return string(b)
}

// K15: unbound claims show in the PV controller's metric, per namespace
// and class, and in the claims' events.
func TestK15_UnboundClaimsMetricAndEvents(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	createPVC(t, ns, claim("waits-for-pod", "stowage-gp3", "1Gi"))
	createPVC(t, ns, claim("no-such-class", "e2e-no-such-class", "1Gi"))

	for _, want := range []string{
		fmt.Sprintf(`pv_collector_unbound_pvc_count{namespace=%q,storage_class="stowage-gp3",volume_attributes_class=""} 1`, ns),
		fmt.Sprintf(`pv_collector_unbound_pvc_count{namespace=%q,storage_class="e2e-no-such-class",volume_attributes_class=""} 1`, ns),
	} {
		waitFor(t, want, time.Minute, func() (bool, error) {
			return strings.Contains(controllerManagerMetrics(t), want), nil
		})
	}
	reasons := map[string]string{"waits-for-pod": "WaitForFirstConsumer", "no-such-class": "ProvisioningFailed"}
	for claimName, reason := range reasons {
		waitFor(t, "event "+reason+" on claim "+claimName, time.Minute, func() (bool, error) {
			evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + claimName})
			if err != nil {
				return false, nil
			}
			for _, e := range evs.Items {
				if e.Reason == reason {
					return true, nil
				}
			}
			return false, nil
		})
		if d := describe(ns, "pvc", claimName); !strings.Contains(d, reason) {
			t.Fatalf("kubectl describe pvc %s does not show %s:\n%s", claimName, reason, d)
		}
	}
}
