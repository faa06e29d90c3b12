package cluster

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Certificate lifetimes. A leaf is reissued by `up` when it expires within
// renewBefore, or when its names no longer match (another node IP).
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// The two certificate authorities: one for every identity in the cluster,
// and a separate one for the front proxy, whose certificates may assert any
// user through request headers and so must not be trusted as client certs.
const (
	CA           = "ca"
	FrontProxyCA = "front-proxy-ca"
)

// CertSpec is one certificate the cluster needs.
type CertSpec struct {
	Name   string // file name without extension: <Name>.crt, <Name>.key
	Issuer string // CA or FrontProxyCA
	CN     string
	Orgs   []string
	DNS    []string
	IPs    []net.IP
	Server bool // serverAuth usage
	Client bool // clientAuth usage
}

// The client identities the components use; each gets a kubeconfig named
// after it. RBAC binds the system ones by default; deploy/local/00-rbac.yaml
// binds the stowage ones.
// kubeconfigUsers are the static users plus each worker's kubelet.
func (c *Config) kubeconfigUsers() []string {
	users := append([]string(nil), kubeconfigUsers...)
	for _, w := range c.Workers {
		users = append(users, "kubelet@"+w.Name)
	}
	return users
}

var kubeconfigUsers = []string{
	"admin", "kubelet", "controller-manager", "scheduler", "kube-proxy",
	"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "snapshot-controller",
	"secrets-store-csi-driver",
}

// CertSpecs lists every certificate of the cluster.
func (c *Config) CertSpecs() []CertSpec {
	node := c.NodeName
	nodeIP := net.ParseIP(c.NodeIP)
	loopback := net.ParseIP("127.0.0.1")
	specs := []CertSpec{
		{Name: "apiserver", Issuer: CA, CN: "kube-apiserver", Server: true,
			DNS: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain, "localhost", node},
			IPs: []net.IP{loopback, nodeIP, c.ServiceIP()}},
		{Name: "apiserver-kubelet-client", Issuer: CA, CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}, Client: true},
		{Name: "apiserver-etcd-client", Issuer: CA, CN: "kube-apiserver-etcd-client", Client: true},
		// The Stowage servers of a multi-node cluster keep their metadata in
		// this etcd, under /stowage.
		{Name: StowageEtcdClientCert, Issuer: CA, CN: "stowage-server-etcd-client", Client: true},
		{Name: "etcd-server", Issuer: CA, CN: "etcd", Server: true, Client: true, DNS: []string{"localhost", node}, IPs: []net.IP{loopback}},
		{Name: "front-proxy-client", Issuer: FrontProxyCA, CN: "front-proxy-client", Client: true},
		{Name: "kubelet-serving", Issuer: CA, CN: "system:node:" + node, Orgs: []string{"system:nodes"}, Server: true,
			DNS: []string{node, "localhost"}, IPs: []net.IP{nodeIP, loopback}},
		{Name: "admin", Issuer: CA, CN: "stowage-admin", Orgs: []string{"system:masters"}, Client: true},
		{Name: "kubelet", Issuer: CA, CN: "system:node:" + node, Orgs: []string{"system:nodes"}, Client: true},
		{Name: "controller-manager", Issuer: CA, CN: "system:kube-controller-manager", Client: true},
		{Name: "scheduler", Issuer: CA, CN: "system:kube-scheduler", Client: true},
		{Name: "kube-proxy", Issuer: CA, CN: "system:kube-proxy", Client: true},
	}
	for _, s := range []string{"csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter", "snapshot-controller"} {
		specs = append(specs, CertSpec{Name: s, Issuer: CA, CN: "stowage:" + s, Orgs: []string{"stowage:csi-controller"}, Client: true})
	}
	// The Stowage server verifies pods' service-account tokens with
	// TokenReview (deploy/local/06-stowage-server-tokenreview.yaml binds it
	// to system:auth-delegator).
	specs = append(specs, CertSpec{Name: StowageServerCert, Issuer: CA, CN: "stowage:stowage-server", Client: true})
	// Each worker's kubelet has its own node identity (NodeRestriction
	// lets it change only its own Node and pods).
	for _, w := range c.Workers {
		specs = append(specs,
			CertSpec{Name: "kubelet@" + w.Name, Issuer: CA, CN: "system:node:" + w.Name, Orgs: []string{"system:nodes"}, Client: true},
			CertSpec{Name: "kubelet-serving@" + w.Name, Issuer: CA, CN: "system:node:" + w.Name, Orgs: []string{"system:nodes"}, Server: true,
				DNS: []string{w.Name}, IPs: []net.IP{net.ParseIP(w.IP)}})
	}
	// deploy/local/07-secrets-store.yaml gives the Secrets Store CSI driver
	// its rights (SecretProviderClasses, their pod statuses, synced Secrets).
	specs = append(specs, CertSpec{Name: "secrets-store-csi-driver", Issuer: CA, CN: "stowage:secrets-store-csi-driver", Client: true})
	// Each storage host serves the agent API with TLS at its address.
	for _, h := range c.StorageHosts {
		specs = append(specs, CertSpec{Name: storageHostCert(h.Name), Issuer: CA, CN: "stowage-agent:" + h.Name, Server: true,
			IPs: []net.IP{net.ParseIP(h.IP)}})
	}
	if c.chartInstall() {
		// The chart's pods reach the Stowage API over TCP, with TLS.
		specs = append(specs, CertSpec{Name: StowageAPICert, Issuer: CA, CN: "stowage-api", Server: true,
			DNS: []string{"localhost"}, IPs: []net.IP{net.ParseIP(c.NodeIP), net.IPv4(127, 0, 0, 1)}})
	}
	return specs
}

// StowageAPICert is the serving certificate of the Stowage API's TCP
// address (a chart install's), signed by CA.
const StowageAPICert = "stowage-api"

// StowageServerCert is the client certificate the Stowage server calls the
// apiserver with.
const StowageServerCert = "stowage-server"

// PKI is the cluster's certificate directory.
type PKI struct{ Dir string }

func (p PKI) Cert(name string) string { return filepath.Join(p.Dir, name+".crt") }
func (p PKI) Key(name string) string  { return filepath.Join(p.Dir, name+".key") }

// ServiceAccountKey and ServiceAccountPub are the token signing key pair.
func (p PKI) ServiceAccountKey() string { return filepath.Join(p.Dir, "sa.key") }
func (p PKI) ServiceAccountPub() string { return filepath.Join(p.Dir, "sa.pub") }

// Ensure creates what is missing, reissues what is stale, keeps the rest,
// and returns the names it (re)issued. A new CA reissues every leaf it signs.
func (p PKI) Ensure(specs []CertSpec, now time.Time) ([]string, error) {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, err
	}
	var issued []string
	cas := map[string]*keyPair{}
	for _, name := range []string{CA, FrontProxyCA} {
		kp, err := p.load(name)
		if err != nil || !kp.cert.IsCA || now.Add(renewBefore).After(kp.cert.NotAfter) {
			if kp, err = p.issueCA(name, now); err != nil {
				return issued, err
			}
			issued = append(issued, name)
		}
		cas[name] = kp
	}
	for _, s := range specs {
		ca := cas[s.Issuer]
		if ca == nil {
			return issued, fmt.Errorf("certificate %s: unknown issuer %q", s.Name, s.Issuer)
		}
		if kp, err := p.load(s.Name); err == nil && leafMatches(kp.cert, s, ca.cert, now) {
			continue
		}
		if err := p.issueLeaf(s, ca, now); err != nil {
			return issued, err
		}
		issued = append(issued, s.Name)
	}
	if _, err := os.Stat(p.ServiceAccountKey()); err != nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return issued, err
		}
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return issued, err
		}
		if err := writeKey(p.ServiceAccountKey(), key); err != nil {
			return issued, err
		}
		if err := writeFileAtomic(p.ServiceAccountPub(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return issued, err
		}
		issued = append(issued, "sa")
	}
	return issued, nil
}

type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func (p PKI) load(name string) (*keyPair, error) {
	cb, err := os.ReadFile(p.Cert(name))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(p.Key(name))
	if err != nil {
		return nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, fmt.Errorf("%s: not PEM", name)
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kblock.Bytes)
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s: key does not match certificate", name)
	}
	return &keyPair{cert: cert, key: key}, nil
}

// leafMatches says whether an existing certificate can be kept.
func leafMatches(cert *x509.Certificate, s CertSpec, ca *x509.Certificate, now time.Time) bool {
	if cert.CheckSignatureFrom(ca) != nil || now.Add(renewBefore).After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return false
	}
	// slices.Equal treats nil and empty alike.
	if cert.Subject.CommonName != s.CN || !slices.Equal(cert.Subject.Organization, s.Orgs) || !slices.Equal(cert.DNSNames, s.DNS) {
		return false
	}
	if len(cert.IPAddresses) != len(s.IPs) {
		return false
	}
	for i, ip := range s.IPs {
		if !cert.IPAddresses[i].Equal(ip) {
			return false
		}
	}
	return slices.Equal(cert.ExtKeyUsage, extKeyUsage(s))
}

func extKeyUsage(s CertSpec) []x509.ExtKeyUsage {
	var u []x509.ExtKeyUsage
	if s.Server {
		u = append(u, x509.ExtKeyUsageServerAuth)
	}
	if s.Client {
		u = append(u, x509.ExtKeyUsageClientAuth)
	}
	return u
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func (p PKI) issueCA(name string, now time.Time) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "stowage-" + name, Organization: []string{"Stowage local cluster"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := p.write(name, der, key); err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func (p PKI) issueLeaf(s CertSpec, ca *keyPair, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: s.CN, Organization: s.Orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  extKeyUsage(s),
		DNSNames:     s.DNS,
		IPAddresses:  s.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", s.Name, err)
	}
	return p.write(s.Name, der, key)
}

func (p PKI) write(name string, der []byte, key *ecdsa.PrivateKey) error {
	if err := writeKey(p.Key(name), key); err != nil {
		return err
	}
	return writeFileAtomic(p.Cert(name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	b, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), 0o600)
}

// writeFileAtomic writes through a temporary file and a rename, and leaves
// an existing file with the same content untouched (so that its mtime says
// when it last changed).
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return os.Chmod(path, perm)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), perm)); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
