package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// secretValues are the secret values the tests used: after the run no log
// of the cluster may hold one (checkLogsHoldNoSecrets).
var (
	secretValuesMu sync.Mutex
	secretValues   = map[string]bool{}
)

func noteSecret(v string) {
	secretValuesMu.Lock()
	defer secretValuesMu.Unlock()
	secretValues[v] = true
}

// stowageIn runs the stowage CLI with stdin (values never go in arguments).
func stowageIn(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	c := cluster.StowageCmd(args...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("stowage %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func stowageOK(t *testing.T, args ...string) string {
	t.Helper()
	return stowageIn(t, "", args...)
}

// etcdGet reads a key from the cluster's etcd directly (its JSON gateway,
// with the apiserver's client certificate), bypassing the apiserver.
func etcdGet(t *testing.T, key string) []byte {
	t.Helper()
	pki := filepath.Join(dataDir, "pki")
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "apiserver-etcd-client.crt"), filepath.Join(pki, "apiserver-etcd-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}}}
	body, _ := json.Marshal(map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key))})
	resp, err := c.Post("https://127.0.0.1:2379/v3/kv/range", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Kvs []struct {
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if len(out.Kvs) != 1 {
		t.Fatalf("etcd key %s: %d values", key, len(out.Kvs))
	}
	return out.Kvs[0].Value
}

type keyInfo struct {
	ID             string `json:"id"`
	CurrentVersion int    `json:"currentVersion"`
}

// Scenario 4: a Kubernetes Secret as env vars, stored in etcd as KMS v2
// ciphertext (still readable after the key rotates); a SecretProviderClass
// by full id, by name and by AWSCURRENT, with jmesPath and a synced
// Secret, mounted by a Deployment of 2 replicas as its own service
// account; an SSM SecureString and a missing optional object; rotation
// reaching both pods and the synced Secret; a pod whose service account
// no policy allows fails to mount, and its event says why.
func TestScenario4_Secrets(t *testing.T) {
	dir := example("4-secrets")
	ctx := context.Background()

	// --- Kubernetes Secrets, encrypted by the KMS v2 plugin.
	noteSecret("p@ssw0rd")
	kubectlErr("", "delete", "secret", "mysecret", "--ignore-not-found")
	kubectl(t, "", "create", "secret", "generic", "mysecret", "--from-literal=username=admin", "--from-literal=password=p@ssw0rd")
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "env-pod.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", filepath.Join(dir, "env-pod.yaml"), "--wait=false")
		kubectlErr("", "delete", "secret", "mysecret", "kms-rotated", "--ignore-not-found")
	})
	var key keyInfo
	if err := json.Unmarshal([]byte(stowageOK(t, "key", "describe", "alias/stowage/kubernetes", "-o", "json")), &key); err != nil {
		t.Fatal(err)
	}
	before := etcdGet(t, "/registry/secrets/default/mysecret")
	if !bytes.HasPrefix(before, []byte("k8s:enc:kms:v2:stowage:")) || bytes.Contains(before, []byte("p@ssw0rd")) || bytes.Contains(before, []byte("admin")) {
		t.Fatalf("etcd holds mysecret as %q…, want k8s:enc:kms:v2:stowage: ciphertext without the values", before[:min(len(before), 40)])
	}
	oldKeyID := fmt.Sprintf("%s/%d", key.ID, key.CurrentVersion)
	if !bytes.Contains(before, []byte(oldKeyID)) {
		t.Errorf("mysecret's ciphertext does not name key version %s", oldKeyID)
	}
	waitPodPhase(t, "default", "secret-env", corev1.PodRunning)
	if got := podExec(t, "default", "secret-env", "sh", "-c", `echo "$DB_USER:$DB_PASSWORD"`); strings.TrimSpace(got) != "admin:p@ssw0rd" {
		t.Errorf("secret-env sees %q, want admin:p@ssw0rd", got)
	}
	// Rotate the apiserver's key now; the apiserver notices at its next
	// Status poll (about a minute), checked at the end.
	stowageOK(t, "key", "rotate", "alias/stowage/kubernetes")
	newKeyID := fmt.Sprintf("%s/%d", key.ID, key.CurrentVersion+1)

	// --- Secrets Manager and Parameter Store objects, a policy for app-sa.
	for _, n := range []string{"app/db-creds", "app/api-key"} {
		stowage("secret", "delete", n, "--force-delete-without-recovery")
	}
	stowage("param", "delete", "/app/db-url")
	stowage("policy", "detach", "e2e-app-secrets", "--principal", "system:serviceaccount:default:app-sa")
	stowage("policy", "delete", "e2e-app-secrets")
	noteSecret("e2e-first-pass-8c1f")
	noteSecret("e2e-api-key-1")
	noteSecret("postgres://db:5432/app")
	stowageIn(t, `{"username":"app","password":"e2e-first-pass-8c1f"}`, "secret", "create", "app/db-creds", "--secret-string-file", "-")
	stowageIn(t, "e2e-api-key-1", "secret", "create", "app/api-key", "--secret-string-file", "-")
	stowageIn(t, "postgres://db:5432/app", "param", "put", "/app/db-url", "--type", "SecureString", "--value-file", "-")
	stowageOK(t, "policy", "create", "--name", "e2e-app-secrets", "--document-file", filepath.Join(dir, "policy.json"))
	stowageOK(t, "policy", "attach", "e2e-app-secrets", "--principal", "system:serviceaccount:default:app-sa")
	t.Cleanup(func() {
		stowage("policy", "detach", "e2e-app-secrets", "--principal", "system:serviceaccount:default:app-sa")
		stowage("policy", "delete", "e2e-app-secrets")
		for _, n := range []string{"app/db-creds", "app/api-key"} {
			stowage("secret", "delete", n, "--force-delete-without-recovery")
		}
		stowage("param", "delete", "/app/db-url")
	})
	var sec struct {
		ARN string `json:"arn"`
	}
	if err := json.Unmarshal([]byte(stowageOK(t, "secret", "describe", "app/db-creds", "-o", "json")), &sec); err != nil || sec.ARN == "" {
		t.Fatalf("secret describe: %v (arn %q)", err, sec.ARN)
	}
	spc, err := os.ReadFile(filepath.Join(dir, "secretproviderclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "serviceaccounts.yaml"))
	kubectl(t, strings.ReplaceAll(string(spc), "SECRET_ARN", sec.ARN), "apply", "-f", "-")
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "deployment.yaml"))
	kubectl(t, "", "apply", "-f", filepath.Join(dir, "denied-pod.yaml"))
	t.Cleanup(func() {
		kubectlErr("", "delete", "-f", filepath.Join(dir, "denied-pod.yaml"), "--wait=false")
		kubectlErr("", "delete", "-f", filepath.Join(dir, "deployment.yaml"), "--wait=true")
		kubectlErr("", "delete", "-f", filepath.Join(dir, "secretproviderclass.yaml"))
		kubectlErr("", "delete", "-f", filepath.Join(dir, "serviceaccounts.yaml"))
		kubectlErr("", "delete", "secret", "app-db", "--ignore-not-found")
	})
	kubectl(t, "", "rollout", "status", "deployment/app", "--timeout=120s")
	pods := appPods(t)
	if len(pods) != 2 {
		t.Fatalf("deployment app has %d running pods, want 2", len(pods))
	}
	want := map[string]string{
		"/mnt/secrets-store/db-creds-by-id":    `{"username":"app","password":"e2e-first-pass-8c1f"}`,
		"/mnt/secrets-store/app_api-key":       "e2e-api-key-1",
		"/mnt/secrets-store/db-creds-current":  `{"username":"app","password":"e2e-first-pass-8c1f"}`,
		"/mnt/secrets-store/db-password":       "e2e-first-pass-8c1f",
		"/mnt/params/db-url":                   "postgres://db:5432/app",
		"/mnt/params/app_feature-flags (none)": "",
	}
	for _, p := range pods {
		for f, v := range want {
			if name, ok := strings.CutSuffix(f, " (none)"); ok {
				if out, err := kubectlErr("", "exec", p, "--", "test", "-e", name); err == nil {
					t.Errorf("pod %s has %s, an optional object that does not exist: %s", p, name, out)
				}
				continue
			}
			if got := podExec(t, "default", p, "cat", f); got != v {
				t.Errorf("pod %s: %s = %q, want %q", p, f, got, v)
			}
		}
		// readOnly: the pod cannot change its secrets.
		if out, err := kubectlErr("", "exec", p, "--", "sh", "-c", "echo x > /mnt/secrets-store/db-password"); err == nil {
			t.Errorf("pod %s could write to its read-only secrets volume: %s", p, out)
		}
	}
	if got := syncedPassword(t); got != "e2e-first-pass-8c1f" {
		t.Errorf("synced Secret app-db has password %q, want e2e-first-pass-8c1f", got)
	}

	// --- A service account that no policy allows.
	waitFor(t, "secrets-denied's FailedMount event naming the secret and the service account", 90*time.Second, func() (bool, error) {
		evs, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=secrets-denied,reason=FailedMount"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "PermissionDenied") && strings.Contains(e.Message, "app/db-creds") &&
				strings.Contains(e.Message, "service account no-access-sa") {
				return true, nil
			}
		}
		return false, nil
	})
	if p, err := kube.CoreV1().Pods("default").Get(ctx, "secrets-denied", metav1.GetOptions{}); err == nil && p.Status.Phase == corev1.PodRunning {
		t.Errorf("secrets-denied runs without its secrets")
	}

	// --- Rotation: a new password and a new api key reach both pods and the
	// synced Secret within the driver's rotation interval.
	stowageOK(t, "secret", "rotate", "app/db-creds")
	stowageIn(t, "e2e-api-key-2", "secret", "put-value", "app/api-key", "--secret-string-file", "-")
	noteSecret("e2e-api-key-2")
	var newPass string
	if err := json.Unmarshal([]byte(stowageOK(t, "secret", "get-value", "app/db-creds", "-o", "json")), &struct {
		SecretString *string `json:"secretString"`
	}{&newPass}); err != nil {
		t.Fatal(err)
	}
	var creds struct {
		Password string `json:"password"`
	}
	if err := json.Unmarshal([]byte(newPass), &creds); err != nil || creds.Password == "" || creds.Password == "e2e-first-pass-8c1f" {
		t.Fatalf("after rotate, app/db-creds' value is not a JSON object with a new password (%v)", err)
	}
	noteSecret(creds.Password)
	start := time.Now()
	waitFor(t, "the rotated values in both pods and the synced Secret", 4*time.Minute, func() (bool, error) {
		for _, p := range pods {
			pw, err1 := kubectlErr("", "exec", p, "--", "cat", "/mnt/secrets-store/db-password")
			key, err2 := kubectlErr("", "exec", p, "--", "cat", "/mnt/secrets-store/app_api-key")
			if err1 != nil || err2 != nil || pw != creds.Password || key != "e2e-api-key-2" {
				return false, nil
			}
		}
		return syncedPassword(t) == creds.Password, nil
	})
	t.Logf("rotation reached both pods and the synced Secret in %s", time.Since(start).Round(time.Second))

	// --- KMS v2 key rotation: new writes use the new version; old Secrets read.
	waitFor(t, "a Secret written after the key rotation to use key version "+newKeyID, 3*time.Minute, func() (bool, error) {
		kubectlErr("", "delete", "secret", "kms-rotated", "--ignore-not-found")
		if _, err := kubectlErr("", "create", "secret", "generic", "kms-rotated", "--from-literal=k=v"); err != nil {
			return false, err
		}
		return bytes.Contains(etcdGet(t, "/registry/secrets/default/kms-rotated"), []byte(newKeyID)), nil
	})
	if got := kubectl(t, "", "get", "secret", "mysecret", "-o", "jsonpath={.data.password}"); got != base64.StdEncoding.EncodeToString([]byte("p@ssw0rd")) {
		t.Errorf("mysecret, written with key version %s, reads as %q after the rotation", oldKeyID, got)
	}
}

func appPods(t *testing.T) []string {
	t.Helper()
	pl, err := kube.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=secrets-app"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pl.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	sort.Strings(names)
	return names
}

func syncedPassword(t *testing.T) string {
	s, err := kube.CoreV1().Secrets("default").Get(context.Background(), "app-db", metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return string(s.Data["password"])
}

// jwt matches a service-account token (a JWT: base64url header and claims).
var jwt = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+`)

// checkLogsHoldNoSecrets fails the run when any log of the cluster, or any
// process's argument list, holds a secret value the tests used, a Stowage
// token of the cluster's components or a service-account token.
func checkLogsHoldNoSecrets() string {
	var needles []string
	secretValuesMu.Lock()
	for v := range secretValues {
		needles = append(needles, v)
	}
	secretValuesMu.Unlock()
	tokens, _ := filepath.Glob(filepath.Join(dataDir, "stowage", "tokens", "*"))
	for _, f := range tokens {
		if b, err := os.ReadFile(f); err == nil && len(bytes.TrimSpace(b)) > 0 {
			needles = append(needles, string(bytes.TrimSpace(b)))
		}
	}
	var found []string
	scan := func(what string, data []byte) {
		for _, n := range needles {
			if bytes.Contains(data, []byte(n)) {
				found = append(found, fmt.Sprintf("%s holds a secret value or token (%d bytes long)", what, len(n)))
			}
		}
		if bytes.Contains(data, []byte("stw_")) {
			found = append(found, what+" holds a Stowage token (stw_…)")
		}
		if jwt.Match(data) {
			found = append(found, what+" holds a service-account token (a JWT)")
		}
	}
	logs, _ := filepath.Glob(filepath.Join(dataDir, "logs", "*.log"))
	// The drivers' pods of a chart install: their containers' logs.
	pods, _ := filepath.Glob(filepath.Join(dataDir, "pod-logs", chartNamespace+"_*", "*", "*.log"))
	for _, f := range append(logs, pods...) {
		if b, err := os.ReadFile(f); err == nil {
			scan("log "+f, b)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		if b, err := os.ReadFile(f); err == nil {
			scan("the argument list of pid "+filepath.Base(filepath.Dir(f))+" ("+string(bytes.SplitN(b, []byte{0}, 2)[0])+")", b)
		}
	}
	if len(needles) == 0 {
		found = append(found, "no secret values or tokens to look for: the check would prove nothing")
	}
	return strings.Join(found, "\n")
}
