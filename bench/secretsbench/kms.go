package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

const kubeSecretBytes = 1024

// createSecrets creates Secrets on k for cfg.kubeFor with cfg.kubeConns
// clients and returns creates per second and each client's names.
func createSecrets(ctx context.Context, k *kube, tag string, value []byte, cfg config) (float64, [][]string, error) {
	// Each client appends to its own list only.
	own := make([][]string, cfg.kubeConns)
	r, err := opsFor(ctx, cfg.kubeConns, cfg.kubeFor, func(ctx context.Context, w int) error {
		name := fmt.Sprintf("%s-w%d-%d", tag, w, len(own[w]))
		if _, err := k.do(ctx, "POST", "/api/v1/namespaces/"+benchNS+"/secrets", secretObject(name, value)); err != nil {
			return err
		}
		own[w] = append(own[w], name)
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("%s: create Secrets: %w", k.name, err)
	}
	return r, own, nil
}

// getSecrets reads the Secrets each client created, round robin, for
// cfg.kubeFor, checks their data and returns gets per second.
func getSecrets(ctx context.Context, k *kube, own [][]string, value []byte, cfg config) (float64, error) {
	next := make([]int, len(own))
	want := base64.StdEncoding.EncodeToString(value)
	r, err := opsFor(ctx, len(own), cfg.kubeFor, func(ctx context.Context, w int) error {
		if len(own[w]) == 0 {
			return fmt.Errorf("client %d created no Secret", w)
		}
		name := own[w][next[w]%len(own[w])]
		next[w]++
		b, err := k.do(ctx, "GET", "/api/v1/namespaces/"+benchNS+"/secrets/"+name, nil)
		if err != nil {
			return err
		}
		var s struct {
			Data map[string]string `json:"data"`
		}
		if err := json.Unmarshal(b, &s); err != nil || s.Data["value"] != want {
			return fmt.Errorf("Secret %s read back other data", name)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: get Secrets: %w", k.name, err)
	}
	return r, nil
}

func benchKMS(ctx context.Context, st *stowage, plain, enc *kube, alias string, rep *report, cfg config) error {
	for _, k := range []*kube{plain, enc} {
		if err := k.createNamespace(ctx, benchNS); err != nil && !strings.Contains(err.Error(), "409") {
			return err
		}
	}
	value := make([]byte, kubeSecretBytes)
	rand.Read(value)
	// Warm-up: connections, the apiserver's first KMS v2 seed (its one
	// Encrypt call through the plugin), etcd's first writes.
	warm := cfg
	warm.kubeFor = time.Second
	for _, k := range []*kube{plain, enc} {
		_, own, err := createSecrets(ctx, k, "warmup", value, warm)
		if err != nil {
			return err
		}
		if _, err := getSecrets(ctx, k, own, value, warm); err != nil {
			return err
		}
	}

	callsBefore, err := st.apiCalls(ctx)
	if err != nil {
		return fmt.Errorf("read the server's metrics: %w", err)
	}
	// Each round measures the two apiservers back to back, creates first
	// then gets, so that each pair of figures shares the machine's load of
	// the moment; the ratio is taken per round, then the median.
	var pc, pg, ec, eg, createRatio, getRatio samples
	var plainNames, encNames []string
	for r := range cfg.kubeRounds {
		order := []*kube{plain, enc}
		if r%2 == 1 {
			order = []*kube{enc, plain}
		}
		progress("Secrets: round %d of %d: %s create, %s get on each apiserver, %d clients, %s first", r+1, cfg.kubeRounds, cfg.kubeFor, cfg.kubeFor, cfg.kubeConns, order[0].name)
		own := map[*kube][][]string{}
		creates, gets := map[*kube]float64{}, map[*kube]float64{}
		for _, k := range order {
			c, o, err := createSecrets(ctx, k, fmt.Sprintf("r%d", r), value, cfg)
			if err != nil {
				return err
			}
			creates[k], own[k] = c, o
		}
		for _, k := range order {
			g, err := getSecrets(ctx, k, own[k], value, cfg)
			if err != nil {
				return err
			}
			gets[k] = g
		}
		pc, pg, ec, eg = append(pc, creates[plain]), append(pg, gets[plain]), append(ec, creates[enc]), append(eg, gets[enc])
		createRatio, getRatio = append(createRatio, creates[enc]/creates[plain]), append(getRatio, gets[enc]/gets[plain])
		for _, o := range own[plain] {
			plainNames = append(plainNames, o...)
		}
		for _, o := range own[enc] {
			encNames = append(encNames, o...)
		}
	}

	callsAfter, err := st.apiCalls(ctx)
	if err != nil {
		return fmt.Errorf("read the server's metrics: %w", err)
	}
	kmsCalls := map[string]int{}
	for set, n := range callsAfter {
		for _, m := range []string{"Encrypt", "Decrypt", "DescribeKey"} {
			if strings.Contains(set, `method="/stowage.v1.KeyService/`+m+`"`) {
				kmsCalls[m] += int(n - callsBefore[set])
			}
		}
	}

	// What etcd holds: the KMS v2 envelope on one, the plain protobuf
	// encoding ("k8s\x00") on the other.
	proof := func(k *kube, name string) (string, error) {
		v, err := k.etcdGet(ctx, "/registry/secrets/"+benchNS+"/"+name)
		if err != nil {
			return "", err
		}
		if len(v) == 0 {
			return "", fmt.Errorf("%s: no key for Secret %s in etcd", k.name, name)
		}
		if bytes.Contains(v, value) {
			return "", fmt.Errorf("%s: etcd holds Secret %s's value in clear", k.name, name)
		}
		return fmt.Sprintf("%q", v[:min(len(v), 24)]), nil
	}
	encHead, err := proof(enc, encNames[len(encNames)-1])
	if err != nil {
		return err
	}
	if !strings.HasPrefix(encHead, `"k8s:enc:kms:v2:stowage:`) {
		return fmt.Errorf("%s: Secret %s is not a KMS v2 envelope in etcd: it starts %s", enc.name, encNames[len(encNames)-1], encHead)
	}
	plainV, err := plain.etcdGet(ctx, "/registry/secrets/"+benchNS+"/"+plainNames[len(plainNames)-1])
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(plainV, []byte("k8s\x00")) || !bytes.Contains(plainV, value) {
		return fmt.Errorf("%s: Secret %s in etcd is not plain protobuf holding the value", plain.name, plainNames[len(plainNames)-1])
	}

	rep.Heading("3. Kubernetes Secrets with KMS v2 on and off")
	rep.Para("Two etcd + kube-apiserver pairs started by the bench, identical except that one has `--encryption-provider-config` (rendered by "+
		"`cluster.EncryptionConfig`: `kms` apiVersion v2, name `stowage`, then `identity`) whose endpoint is a `stowage kms-plugin` process using the "+
		"Stowage key `%s`. %d concurrent clients (HTTP/2, one connection, admin client certificate) create Secrets of %d random bytes for %s, then "+
		"get the Secrets they created, round robin, for %s; every get checks the data. %d round(s); in each, the creates of the two apiservers run back to back, "+
		"then the gets, the order swapped every other round; the on/off ratio is taken per round, then the median. Both etcds are on the same disk, with fsync: a create waits for etcd's commit.", alias, cfg.kubeConns, kubeSecretBytes, cfg.kubeFor, cfg.kubeFor, cfg.kubeRounds)
	rep.Table([]string{"operation", "KMS off, ops/s (median)", "KMS v2 on, ops/s (median)", "**on / off** (median of the rounds' ratios)", "each round", "goal"}, [][]string{
		{"Secret create", rate(pc.Median()), rate(ec.Median()), fmt.Sprintf("**%.2f**", createRatio.Median()), each(createRatio),
			"≥ 0.90: **" + met(createRatio.Median() >= 0.9) + "**"},
		{"Secret get", rate(pg.Median()), rate(eg.Median()), fmt.Sprintf("**%.2f**", getRatio.Median()), each(getRatio), "—"},
	})
	rep.Para("During the timed rounds the KMS v2 apiserver wrote %d and read %d Secrets (the off one %d and %d) and the kms-plugin made %d Encrypt, "+
		"%d Decrypt and %d DescribeKey (its Status) calls to the Stowage API: KMS v2 encrypts each Secret with a data key derived locally from a seed "+
		"the plugin wrapped once, so the Stowage KMS is not on the per-Secret path.",
		int(ec.Sum()*cfg.kubeFor.Seconds()), int(eg.Sum()*cfg.kubeFor.Seconds()), int(pc.Sum()*cfg.kubeFor.Seconds()), int(pg.Sum()*cfg.kubeFor.Seconds()),
		kmsCalls["Encrypt"], kmsCalls["Decrypt"], kmsCalls["DescribeKey"])
	rep.Para("In etcd (read through etcd's v3 JSON gateway, as `etcdctl get` would): with KMS v2 the Secret's value starts %s and does not contain the "+
		"Secret's bytes; without encryption it starts `k8s\\x00` (protobuf) and does.", "`k8s:enc:kms:v2:stowage:`")
	return nil
}

// each lists values with two decimals.
func each(v samples) string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(out, ", ")
}
