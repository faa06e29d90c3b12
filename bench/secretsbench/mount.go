package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/provider"
)

const (
	benchNS  = "bench"
	benchSA  = "app"
	benchPod = "app-0"
	// maxObjects is the larger mount; the smaller is its first object.
	maxObjects = 20
)

// object is one secret or parameter of the bench and the bytes it holds.
type object struct {
	name, typ string
	value     []byte
	file      string // the same bytes in a local file (the baseline)
}

// objects makes maxObjects values of cfg.valueBytes (every fourth a
// SecureString parameter, the rest secrets), in the server and in local
// files under dir.
func makeObjects(ctx context.Context, s *stowage, dir string, size int) ([]object, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	actx := withToken(ctx, s.adminToken)
	var objs []object
	for i := range maxObjects {
		raw := make([]byte, size)
		rand.Read(raw)
		v := fmt.Sprintf(`{"username":"app-%d","password":"%s"}`, i, base64.RawURLEncoding.EncodeToString(raw))[:size-2] + `"}`
		o := object{value: []byte(v), file: filepath.Join(dir, fmt.Sprintf("obj-%02d", i))}
		if i%4 == 3 {
			o.name, o.typ = fmt.Sprintf("/bench/param-%02d", i), provider.TypeSSMParameter
			if _, err := s.params.PutParameter(actx, &pb.PutParameterRequest{Name: o.name, Value: v, Type: "SecureString"}); err != nil {
				return nil, fmt.Errorf("put parameter %s: %w", o.name, err)
			}
		} else {
			o.name, o.typ = fmt.Sprintf("bench/secret-%02d", i), provider.TypeSecretsManager
			if _, err := s.secrets.CreateSecret(actx, &pb.CreateSecretRequest{Name: o.name, SecretString: &v}); err != nil {
				return nil, fmt.Errorf("create secret %s: %w", o.name, err)
			}
		}
		if err := os.WriteFile(o.file, o.value, 0o600); err != nil {
			return nil, err
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// mountRequest is what the Secrets Store CSI driver sends for a pod whose
// SecretProviderClass lists objs: the class's parameters plus the pod's
// attributes and its service-account token for audience stowage.
func mountRequest(objs []object, token, target string) (*v1alpha1.MountRequest, error) {
	var y strings.Builder
	for _, o := range objs {
		fmt.Fprintf(&y, "- objectName: %q\n  objectType: %q\n", o.name, o.typ)
	}
	tokens, err := json.Marshal(map[string]any{provider.DefaultAudience: map[string]string{
		"token": token, "expirationTimestamp": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}})
	if err != nil {
		return nil, err
	}
	attrib, err := json.Marshal(map[string]string{
		"objects":                                  y.String(),
		"csi.storage.k8s.io/pod.namespace":         benchNS,
		"csi.storage.k8s.io/pod.name":              benchPod,
		"csi.storage.k8s.io/pod.uid":               "00000000-0000-0000-0000-000000000001",
		"csi.storage.k8s.io/serviceAccount.name":   benchSA,
		"csi.storage.k8s.io/ephemeral":             "false",
		"secretProviderClass":                      "bench",
		"csi.storage.k8s.io/serviceAccount.tokens": string(tokens),
	})
	if err != nil {
		return nil, err
	}
	return &v1alpha1.MountRequest{Attributes: string(attrib), Secrets: "{}", TargetPath: target, Permission: "420"}, nil
}

// readFiles is the baseline: open, read and close each object's local file.
func readFiles(objs []object, buf []byte) (int, error) {
	n := 0
	for _, o := range objs {
		f, err := os.Open(o.file)
		if err != nil {
			return n, err
		}
		m, err := io.ReadFull(f, buf[:len(o.value)])
		f.Close()
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

type mountCase struct {
	n                                             int
	local, mount, poll, batch, adminBatch, review []time.Duration
	hist                                          histDelta
}

func benchMount(ctx context.Context, s *stowage, k *kube, work string, rep *report, cfg config) error {
	progress("mount: namespace %s, service account %s, token for audience %s (TokenRequest)", benchNS, benchSA, provider.DefaultAudience)
	if err := k.createNamespace(ctx, benchNS); err != nil {
		return err
	}
	token, err := k.serviceAccountToken(ctx, benchNS, benchSA, provider.DefaultAudience)
	if err != nil {
		return err
	}
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["secretsmanager:GetSecretValue","ssm:GetParameter"],"Resource":["bench/*","/bench/*"]}]}`
	if _, err := s.cli(ctx, strings.NewReader(policy), "policy", "create", "--name", "bench-app", "--document-file", "-"); err != nil {
		return err
	}
	if _, err := s.cli(ctx, nil, "policy", "attach", "bench-app", "--principal", "system:serviceaccount:"+benchNS+":"+benchSA); err != nil {
		return err
	}
	progress("mount: %d objects of %d bytes (secrets and SecureString parameters) in the server and in local files", maxObjects, cfg.valueBytes)
	objs, err := makeObjects(ctx, s, filepath.Join(work, "baseline"), cfg.valueBytes)
	if err != nil {
		return err
	}
	target := filepath.Join(work, "target")
	buf := make([]byte, cfg.valueBytes)
	method := "/stowage.v1.SecretService/BatchGetValues"

	var cases []*mountCase
	for _, n := range []int{1, maxObjects} {
		c := &mountCase{n: n}
		cases = append(cases, c)
		req, err := mountRequest(objs[:n], token, target)
		if err != nil {
			return err
		}
		// The provider's own call, made directly: the provider's token and
		// the pod's, as the provider sends them.
		breq := &pb.BatchGetValuesRequest{}
		for _, o := range objs[:n] {
			breq.Refs = append(breq.Refs, &pb.ValueRef{Type: o.typ, Id: o.name})
		}
		bctx := metadata.AppendToOutgoingContext(withToken(ctx, s.providerToken), provider.TokenMetadata, token)

		first, err := s.prov.Mount(ctx, req)
		if err != nil {
			return fmt.Errorf("mount of %d objects: %w", n, err)
		}
		if len(first.Files) != n {
			return fmt.Errorf("mount of %d objects returned %d files", n, len(first.Files))
		}
		for i, f := range first.Files {
			if string(f.Contents) != string(objs[i].value) {
				return fmt.Errorf("mount returned other bytes for %s than the bench stored", objs[i].name)
			}
		}
		poll := &v1alpha1.MountRequest{Attributes: req.Attributes, Secrets: req.Secrets, TargetPath: req.TargetPath,
			Permission: req.Permission, CurrentObjectVersion: first.ObjectVersion}
		if r, err := s.prov.Mount(ctx, poll); err != nil || len(r.Files) != 0 {
			return fmt.Errorf("rotation poll of %d objects: %d files, %v (want none: nothing changed)", n, len(r.GetFiles()), err)
		}
		for range 10 { // warm-up: connections, the server's caches
			_, _ = s.prov.Mount(ctx, req)
			_, _ = readFiles(objs[:n], buf)
		}

		progress("mount: %d object(s): %d × (local files, Mount, rotation poll, BatchGetValues, TokenReview)", n, cfg.mounts)
		before, err := s.apiHistogram(ctx, method)
		if err != nil {
			return fmt.Errorf("read the server's metrics: %w", err)
		}
		for i := range cfg.mounts {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t := time.Now()
			if _, err := readFiles(objs[:n], buf); err != nil {
				return err
			}
			c.local = append(c.local, time.Since(t))

			t = time.Now()
			r, err := s.prov.Mount(ctx, req)
			if err != nil {
				return fmt.Errorf("mount %d of %d objects: %w", i, n, err)
			}
			c.mount = append(c.mount, time.Since(t))
			if len(r.Files) != n {
				return fmt.Errorf("mount %d of %d objects returned %d files", i, n, len(r.Files))
			}
		}
		after, err := s.apiHistogram(ctx, method)
		if err != nil {
			return fmt.Errorf("read the server's metrics: %w", err)
		}
		c.hist = delta(before, after)
		for i := range cfg.mounts {
			t := time.Now()
			r, err := s.prov.Mount(ctx, poll)
			if err != nil {
				return fmt.Errorf("rotation poll %d of %d objects: %w", i, n, err)
			}
			c.poll = append(c.poll, time.Since(t))
			if len(r.Files) != 0 {
				return fmt.Errorf("rotation poll %d returned files although nothing changed", i)
			}

			t = time.Now()
			br, err := s.secrets.BatchGetValues(bctx, breq)
			if err != nil {
				return fmt.Errorf("BatchGetValues of %d objects: %w", n, err)
			}
			c.batch = append(c.batch, time.Since(t))
			if len(br.Values) != n || br.Values[n-1].ErrorCode != 0 {
				return fmt.Errorf("BatchGetValues of %d objects: %d values, last error %q", n, len(br.Values), br.Values[len(br.Values)-1].ErrorMessage)
			}

			t = time.Now()
			if _, err := s.secrets.BatchGetValues(withToken(ctx, s.adminToken), breq); err != nil {
				return fmt.Errorf("BatchGetValues of %d objects as the admin: %w", n, err)
			}
			c.adminBatch = append(c.adminBatch, time.Since(t))

			t = time.Now()
			if err := k.tokenReview(ctx, token, provider.DefaultAudience); err != nil {
				return err
			}
			c.review = append(c.review, time.Since(t))
		}
	}

	rep.Heading("1. Secrets Store CSI mount")
	rep.Para("A MountRequest as the Secrets Store CSI driver sends it (the SecretProviderClass `objects`, the pod's namespace, name and service account, "+
		"and its service-account token for audience `stowage` in `csi.storage.k8s.io/serviceAccount.tokens`) on `<providers dir>/stowage.sock` of a real "+
		"`stowage secrets-provider` process, which fetches every object from a real `stowage server` in one BatchGetValues; the server verifies the "+
		"pod's token with the TokenReview API of the bench's own kube-apiserver (token made with TokenRequest; the service account has a policy allowing "+
		"`secretsmanager:GetSecretValue` and `ssm:GetParameter` on the objects). Values are %d bytes each; every fourth object is a SecureString "+
		"parameter. **Baseline:** open, read and close the same bytes from N local files (page cache), timed alternately with the mounts in the same loop. "+
		"%d timed mounts per case after 10 warm-up ones. Every mount's files were checked against what was stored.", cfg.valueBytes, cfg.mounts)
	var rows [][]string
	for _, c := range cases {
		rows = append(rows, []string{strconv.Itoa(c.n),
			ms(p50(c.local)) + " / " + ms(p99(c.local)),
			ms(p50(c.mount)) + " / " + ms(p99(c.mount)),
			"**" + ratio(float64(p50(c.mount)), float64(p50(c.local))) + "** / " + ratio(float64(p99(c.mount)), float64(p99(c.local))),
			ms(p50(c.poll)) + " / " + ms(p99(c.poll)),
			ms(p50(c.batch)) + " / " + ms(p99(c.batch)),
			c.hist.summary(),
			ms(p50(c.adminBatch)) + " / " + ms(p99(c.adminBatch)),
			ms(p50(c.review)) + " / " + ms(p99(c.review)),
		})
	}
	rep.Table([]string{"objects", "local files ms p50 / p99", "Mount ms p50 / p99", "**Mount / local** p50 / p99", "rotation poll (unchanged) ms p50 / p99",
		"BatchGetValues called directly ms p50 / p99", "server's BatchGetValues handler, incl. its TokenReview (metrics histogram, during the mounts)", "BatchGetValues as the admin (no pod token: no TokenReview, no per-object policy) ms p50 / p99", "TokenReview alone ms p50 / p99"}, rows)
	big := cases[len(cases)-1]
	rep.List(
		fmt.Sprintf("Goal: a %d-object mount in one round trip, p50 under 5 ms server side. One round trip: the provider makes one BatchGetValues per mount "+
			"(%d BatchGetValues counted by the server's metrics during %d mounts). Server side: the BatchGetValues handler's p50 from the server's histogram is about %s ms, and BatchGetValues called "+
			"directly (the gRPC hop, both tokens' authentication, the TokenReview) p50 %s ms: **%s**.", maxObjects, int(big.hist.count), cfg.mounts,
			ms(big.hist.quantile(0.5)), ms(p50(big.batch)), met(big.hist.quantile(0.5) < 5*time.Millisecond)),
		"The rotation poll sends the versions the pod has (`current_object_version`); the server answers from metadata and the provider returns no files: "+
			"checked on every poll.",
		"TokenReview alone is the bench calling the same apiserver with the admin certificate: the server makes one such review per mount (it keeps no cache).",
	)
	return nil
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

// histDelta is the distribution of the calls observed between two scrapes
// of a Prometheus histogram: cumulative counts by upper bound.
type histDelta struct {
	count float64
	le    map[string]float64
}

func delta(before, after map[string]float64) histDelta {
	d := histDelta{le: map[string]float64{}}
	for k, v := range after {
		d.le[k] = v - before[k]
	}
	d.count = d.le["+Inf"]
	return d
}

// summary is the share of calls within 2.5, 5 and 10 ms and the p50
// interpolated within its bucket (as Prometheus' histogram_quantile does).
func (d histDelta) summary() string {
	if d.count == 0 {
		return "no calls observed"
	}
	pct := func(le string) string { return fmt.Sprintf("%.0f %%", 100*d.le[le]/d.count) }
	return fmt.Sprintf("p50 ≈ %s ms; ≤ 2.5 ms %s, ≤ 5 ms %s, ≤ 10 ms %s of %d", ms(d.quantile(0.5)), pct("0.0025"), pct("0.005"), pct("0.01"), int(d.count))
}

func (d histDelta) quantile(q float64) time.Duration {
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, n := range d.le {
		if le, err := strconv.ParseFloat(k, 64); err == nil && k != "+Inf" {
			bs = append(bs, bucket{le, n})
		}
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	rank, lo, below := q*d.count, 0.0, 0.0
	for _, b := range bs {
		if b.n >= rank && b.n > below {
			return time.Duration((lo + (b.le-lo)*(rank-below)/(b.n-below)) * float64(time.Second))
		}
		lo, below = b.le, b.n
	}
	return time.Duration(lo * float64(time.Second))
}
