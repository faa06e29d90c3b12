package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
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
	n            int
	local, mount []time.Duration
	steps        map[string][]time.Duration
	hist         histDelta
	calls        float64 // every API call the server answered during the timed mounts
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
	tokenFile := filepath.Join(work, "reader.token")
	if _, err := s.cli(ctx, nil, "token", "create", "--principal", "bench-reader", "--out-file", tokenFile); err != nil {
		return err
	}
	// A service account has BatchGetValues built in; another principal
	// needs it granted, then its objects are checked one by one as a pod's.
	batch := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:BatchGetValues","Resource":"*"}]}`
	if _, err := s.cli(ctx, strings.NewReader(batch), "policy", "create", "--name", "bench-batch", "--document-file", "-"); err != nil {
		return err
	}
	for _, pol := range []string{"bench-app", "bench-batch"} {
		if _, err := s.cli(ctx, nil, "policy", "attach", pol, "--principal", "bench-reader"); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	readerToken := strings.TrimSpace(string(b))
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
		if err := sameFiles(first, objs[:n]); err != nil {
			return fmt.Errorf("mount of %d objects: %w", n, err)
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
		callsBefore, err := s.apiCalls(ctx)
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
			if err := sameFiles(r, objs[:n]); err != nil {
				return fmt.Errorf("mount %d of %d objects: %w", i, n, err)
			}
		}
		after, err := s.apiHistogram(ctx, method)
		if err != nil {
			return fmt.Errorf("read the server's metrics: %w", err)
		}
		c.hist = delta(before, after)
		callsAfter, err := s.apiCalls(ctx)
		if err != nil {
			return fmt.Errorf("read the server's metrics: %w", err)
		}
		for m, n := range callsAfter {
			c.calls += n - callsBefore[m]
		}
		// The server side of a mount, taken apart: the provider's own call
		// (pod token: TokenReview, then a policy check per object), the same
		// batch by a token principal with the same policy (no TokenReview),
		// by the admin (no policy check), and the TokenReview alone.
		steps := []struct {
			name string
			do   func() error
		}{
			{"poll", func() error {
				r, err := s.prov.Mount(ctx, poll)
				if err == nil && len(r.Files) != 0 {
					err = fmt.Errorf("returned files although nothing changed")
				}
				return err
			}},
			{"batch", func() error { return checkBatch(s.secrets.BatchGetValues(bctx, breq)) }},
			{"reader", func() error { return checkBatch(s.secrets.BatchGetValues(withToken(ctx, readerToken), breq)) }},
			{"admin", func() error { return checkBatch(s.secrets.BatchGetValues(withToken(ctx, s.adminToken), breq)) }},
			{"review", func() error { return k.tokenReview(ctx, token, provider.DefaultAudience) }},
		}
		c.steps = map[string][]time.Duration{}
		for range cfg.mounts {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			for _, st := range steps {
				t := time.Now()
				if err := st.do(); err != nil {
					return fmt.Errorf("%s of %d objects: %w", st.name, n, err)
				}
				c.steps[st.name] = append(c.steps[st.name], time.Since(t))
			}
		}
	}

	rep.Heading("1. Secrets Store CSI mount")
	rep.Para("A MountRequest as the Secrets Store CSI driver sends it (the SecretProviderClass `objects`, the pod's namespace, name and service account, "+
		"and its service-account token for audience `stowage` in `csi.storage.k8s.io/serviceAccount.tokens`) on `<providers dir>/stowage.sock` of a real "+
		"`stowage secrets-provider` process, which fetches every object from a real `stowage server` in one BatchGetValues; the server verifies the "+
		"pod's token with the TokenReview API of the bench's own kube-apiserver (token made with TokenRequest; the service account has a policy allowing "+
		"`secretsmanager:GetSecretValue` and `ssm:GetParameter` on the objects, made with `stowage policy create` and `attach`). Values are %d bytes each; "+
		"every fourth object is a SecureString parameter. Every mount's files were checked against what was stored; every rotation poll (a second Mount "+
		"with `current_object_version` = the versions the first returned) was checked to return no files (the server answered unchanged). "+
		"**Baseline:** open, read and close the same bytes from N local files (page cache), timed alternately with the mounts in the same loop. "+
		"%d timed mounts and polls per case after 10 warm-up mounts.", cfg.valueBytes, cfg.mounts)
	var rows [][]string
	pp := func(ds []time.Duration) string { return ms(p50(ds)) + " / " + ms(p99(ds)) }
	for _, c := range cases {
		rows = append(rows, []string{strconv.Itoa(c.n), pp(c.local), pp(c.mount),
			"**" + ratio(float64(p50(c.mount)), float64(p50(c.local))) + "** / " + ratio(float64(p99(c.mount)), float64(p99(c.local))),
			pp(c.steps["poll"]), ratio(float64(p50(c.steps["poll"])), float64(p50(c.local)))})
	}
	rep.Table([]string{"objects", "local files, ms p50 / p99", "Mount, ms p50 / p99", "**Mount / local**, p50 / p99",
		"rotation poll (unchanged), ms p50 / p99", "poll / local, p50"}, rows)
	rows = nil
	for _, c := range cases {
		rows = append(rows, []string{strconv.Itoa(c.n), c.hist.summary(), pp(c.steps["batch"]), pp(c.steps["reader"]), pp(c.steps["admin"]), pp(c.steps["review"])})
	}
	rep.Para("Where a mount's time goes, in the same run. The server's handler time is its own histogram " +
		"(`stowage_api_request_duration_seconds`, BatchGetValues, scraped before and after the timed mounts); it includes the TokenReview, which the " +
		"handler makes. The three direct calls send the provider's request itself over the server's unix socket (one gRPC hop; each includes the " +
		"authentication of the caller's token): with the provider's token and the pod's, as the provider sends it; as a token principal with the pod's " +
		"policy (a policy check per object, no TokenReview); as the admin (no policy check). TokenReview alone is the bench asking the same apiserver.")
	rep.Table([]string{"objects", "server handler (histogram)", "provider + pod token, ms p50 / p99", "token principal with the policy, ms p50 / p99",
		"admin, ms p50 / p99", "TokenReview alone, ms p50 / p99"}, rows)
	big := cases[len(cases)-1]
	lo, hi := big.hist.bucketOf(0.5)
	direct := p50(big.steps["batch"])
	oneTrip := big.calls == big.hist.count && big.hist.count == float64(cfg.mounts)
	rep.List(
		fmt.Sprintf("**Goal: a %d-object mount in one round trip, p50 under 5 ms server side.** One round trip: **%s** (during the %d timed mounts "+
			"the server answered %d API calls in all, %d of them BatchGetValues). Under 5 ms server side: **%s** — the handler's p50 (its histogram) "+
			"is in the bucket (%g, %g] ms. For comparison, the provider's call made directly, i.e. the handler plus one gRPC hop and the provider "+
			"token's check, has p50 %s ms; the TokenReview alone %s ms; the same batch without a TokenReview (the token principal) %s ms end to end.",
			maxObjects, met(oneTrip), cfg.mounts, int(big.calls), int(big.hist.count), met(hi <= 0.005), lo*1e3, hi*1e3,
			ms(direct), ms(p50(big.steps["review"])), ms(p50(big.steps["reader"]))),
		"The server verifies the pod's token with one TokenReview per call (it keeps no cache, docs/secrets.md), so every mount and every rotation "+
			"poll pays an HTTPS round trip to the apiserver.",
	)
	return nil
}

// sameFiles fails a mount whose files are not the objects' bytes.
func sameFiles(r *v1alpha1.MountResponse, objs []object) error {
	if len(r.Files) != len(objs) {
		return fmt.Errorf("%d files for %d objects", len(r.Files), len(objs))
	}
	for i, f := range r.Files {
		if string(f.Contents) != string(objs[i].value) {
			return fmt.Errorf("other bytes for %s than the bench stored", objs[i].name)
		}
	}
	return nil
}

// checkBatch fails a batch reply with any per-object error.
func checkBatch(r *pb.BatchGetValuesResponse, err error) error {
	if err != nil {
		return err
	}
	for _, v := range r.Values {
		if v.ErrorCode != 0 {
			return fmt.Errorf("object %s: %s", v.Name, v.ErrorMessage)
		}
	}
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
	lo, hi := d.bucketOf(0.5)
	return fmt.Sprintf("p50 in (%g, %g] ms (≈ %.1f interpolated); ≤ 2.5 ms %s, ≤ 5 ms %s, ≤ 10 ms %s of %d calls",
		lo*1e3, hi*1e3, float64(d.quantile(0.5))/1e6, pct("0.0025"), pct("0.005"), pct("0.01"), int(d.count))
}

// bucketOf is the bounds (seconds) of the bucket holding the q-quantile.
func (d histDelta) bucketOf(q float64) (lo, hi float64) {
	for _, b := range d.buckets() {
		if b.n >= q*d.count {
			return lo, b.le
		}
		lo = b.le
	}
	return lo, math.Inf(1)
}

type bucket struct{ le, n float64 }

// buckets are the finite buckets by upper bound.
func (d histDelta) buckets() []bucket {
	var bs []bucket
	for k, n := range d.le {
		if le, err := strconv.ParseFloat(k, 64); err == nil && k != "+Inf" {
			bs = append(bs, bucket{le, n})
		}
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	return bs
}

func (d histDelta) quantile(q float64) time.Duration {
	rank, lo, below := q*d.count, 0.0, 0.0
	for _, b := range d.buckets() {
		if b.n >= rank && b.n > below {
			return time.Duration((lo + (b.le-lo)*(rank-below)/(b.n-below)) * float64(time.Second))
		}
		lo, below = b.le, b.n
	}
	return time.Duration(lo * float64(time.Second))
}
