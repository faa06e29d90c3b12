package cluster

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func testConfig(t *testing.T) *Config {
	t.Helper()
	// Short: socket paths under the data directory are limited in length.
	dir, err := os.MkdirTemp("", "stw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Config{DataDir: dir, BinDir: "/opt/bin", Stowage: "/usr/bin/stowage", NodeName: "Node-1"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: not PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestPKIEnsure_EveryCertVerifiesAgainstItsCA(t *testing.T) {
	c := testConfig(t)
	pki := PKI{Dir: c.Layout().PKI()}
	issued, err := pki.Ensure(c.CertSpecs(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := len(c.CertSpecs()) + 3; len(issued) != want { // + 2 CAs + service-account key
		t.Errorf("issued %d, want %d: %v", len(issued), want, issued)
	}
	for _, s := range c.CertSpecs() {
		cert := readCert(t, pki.Cert(s.Name))
		roots := x509.NewCertPool()
		roots.AddCert(readCert(t, pki.Cert(s.Issuer)))
		usage := x509.ExtKeyUsageClientAuth
		if s.Server {
			usage = x509.ExtKeyUsageServerAuth
		}
		opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}
		if s.Server {
			opts.DNSName = s.DNS[0]
		}
		if _, err := cert.Verify(opts); err != nil {
			t.Errorf("%s does not verify against %s: %v", s.Name, s.Issuer, err)
		}
		if cert.Subject.CommonName != s.CN || !slices.Equal(cert.Subject.Organization, s.Orgs) {
			t.Errorf("%s: subject %v, want CN=%s O=%v", s.Name, cert.Subject, s.CN, s.Orgs)
		}
		if _, err := os.Stat(pki.Key(s.Name)); err != nil {
			t.Errorf("%s: no key: %v", s.Name, err)
		}
	}
	// The front proxy's certificate must not be accepted as a client cert
	// of the main CA.
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, pki.Cert(CA)))
	if _, err := readCert(t, pki.Cert("front-proxy-client")).Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("front-proxy-client verifies against the cluster CA; it must have its own CA")
	}
}

func TestPKIEnsure_APIServerCertNamesEveryAddress(t *testing.T) {
	c := testConfig(t)
	pki := PKI{Dir: c.Layout().PKI()}
	if _, err := pki.Ensure(c.CertSpecs(), time.Now()); err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, pki.Cert("apiserver"))
	for _, dns := range []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", "node-1"} {
		if err := cert.VerifyHostname(dns); err != nil {
			t.Errorf("apiserver certificate: %v", err)
		}
	}
	for _, ip := range []string{"127.0.0.1", DefaultNodeIP, "198.19.0.1"} {
		if err := cert.VerifyHostname(ip); err != nil {
			t.Errorf("apiserver certificate: %v", err)
		}
	}
	kubelet := readCert(t, pki.Cert("kubelet"))
	if kubelet.Subject.CommonName != "system:node:node-1" || !slices.Equal(kubelet.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("kubelet client certificate subject %v, want system:node:node-1 in system:nodes", kubelet.Subject)
	}
}

func TestPKIEnsure_SecondRunReusesAndNewNodeIPReissuesOnlyServingCerts(t *testing.T) {
	c := testConfig(t)
	pki := PKI{Dir: c.Layout().PKI()}
	if _, err := pki.Ensure(c.CertSpecs(), time.Now()); err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, pki.Cert(CA))
	issued, err := pki.Ensure(c.CertSpecs(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(issued) != 0 {
		t.Errorf("second run issued %v, want nothing", issued)
	}
	c.NodeIP = "203.0.113.7"
	issued, err = pki.Ensure(c.CertSpecs(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(issued)
	if want := []string{"apiserver", "kubelet-serving"}; !slices.Equal(issued, want) {
		t.Errorf("after a node IP change issued %v, want %v", issued, want)
	}
	if !readCert(t, pki.Cert(CA)).Equal(ca) {
		t.Error("the CA changed")
	}
	if !readCert(t, pki.Cert("apiserver")).IPAddresses[1].Equal(net.ParseIP("203.0.113.7")) {
		t.Error("the apiserver certificate does not name the new node IP")
	}
}

func TestPKIEnsure_ExpiringLeafIsReissued(t *testing.T) {
	c := testConfig(t)
	pki := PKI{Dir: c.Layout().PKI()}
	if _, err := pki.Ensure(c.CertSpecs(), time.Now().Add(-leafValidity+renewBefore/2)); err != nil {
		t.Fatal(err)
	}
	issued, err := pki.Ensure(c.CertSpecs(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(issued) != len(c.CertSpecs()) {
		t.Errorf("reissued %d certificates, want every leaf (%d)", len(issued), len(c.CertSpecs()))
	}
}

func TestKubeconfig_EmbedsCAAndClientCert(t *testing.T) {
	c := testConfig(t)
	pki := PKI{Dir: c.Layout().PKI()}
	if _, err := pki.Ensure(c.CertSpecs(), time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := c.Kubeconfig("kubelet")
	if err != nil {
		t.Fatal(err)
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CA     string `json:"certificate-authority-data"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			Name string `json:"name"`
			User struct {
				Cert string `json:"client-certificate-data"`
				Key  string `json:"client-key-data"`
			} `json:"user"`
		} `json:"users"`
		CurrentContext string `json:"current-context"`
	}
	if err := yaml.Unmarshal(b, &kc); err != nil {
		t.Fatal(err)
	}
	if len(kc.Clusters) != 1 || kc.Clusters[0].Cluster.Server != "https://"+DefaultNodeIP+":6443" {
		t.Fatalf("clusters: %+v", kc.Clusters)
	}
	ca, _ := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CA)
	if want, _ := os.ReadFile(pki.Cert(CA)); string(ca) != string(want) {
		t.Error("certificate-authority-data is not the CA")
	}
	crt, _ := base64.StdEncoding.DecodeString(kc.Users[0].User.Cert)
	if want, _ := os.ReadFile(pki.Cert("kubelet")); string(crt) != string(want) {
		t.Error("client-certificate-data is not the kubelet's certificate")
	}
	if kc.CurrentContext == "" || kc.Users[0].User.Key == "" {
		t.Errorf("incomplete kubeconfig:\n%s", b)
	}
}
