package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/agentapi"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/server"
	"github.com/stowage-io/stowage/internal/testutil/testcerts"
)

// startAgent runs stowage agent until the test ends and returns its API
// address.
func startAgent(t *testing.T, o agentOptions) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- runAgent(ctx, o, func(api, _ string) { ready <- api }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", o.pool, err)
		}
	})
	select {
	case api := <-ready:
		return api
	case err := <-done:
		t.Fatalf("agent did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not start in 10 s")
	}
	return ""
}

// startServer runs stowage server until stop (or the test's end).
func startServer(t *testing.T, o serverOptions) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServer(ctx, o) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear in 20 s", path)
}

// waitPool waits until the server lists pool, and returns it.
func waitPool(t *testing.T, c pb.PoolServiceClient, pool string) *pb.Pool {
	t.Helper()
	var last error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.ListPools(ctx, &pb.ListPoolsRequest{}, grpc.WaitForReady(true))
		cancel()
		last = err
		for _, p := range resp.GetPools() {
			if p.Name == pool {
				return p
			}
		}
	}
	t.Fatalf("the server did not list pool %s in 20 s (last error: %v)", pool, last)
	return nil
}

// A storage host that registers over the network is served: its pool is
// listed and takes volumes, and a restarted server connects to it again
// from its record without waiting for the next registration. A storage
// host registers its own pool only; an agent that refuses the server's
// agent token is not added, and the error names its address.
func TestStorageHostRegisters_ServerServesItsPool_AfterARestartToo(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	agentToken := writeToken(t, "the-clusters-agent-token")
	sock := filepath.Join(dir, "api.sock")
	so := serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a", agentTokenFile: agentToken,
		auth: authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-r"}}}
	stop := startServer(t, so)
	hostToken := filepath.Join(tokens, "storage-host@pool-r")
	waitFile(t, hostToken)

	poolDir := filepath.Join(dir, "storage-1", "pool")
	startAgent(t, agentOptions{listen: "127.0.0.1:0", nbdListen: "127.0.0.1:0", tokenFile: agentToken,
		pool: "name=pool-r,dir=" + poolDir + ",zone=zone-b,node=storage-1", server: "unix://" + sock, serverTokenFile: hostToken,
		registerInterval: time.Hour})

	admin, err := dial("unix://"+sock, filepath.Join(tokens, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	pools := pb.NewPoolServiceClient(admin)
	p := waitPool(t, pools, "pool-r")
	if p.Zone != "zone-b" || p.Node != "storage-1" || !p.Zonal {
		t.Fatalf("registered pool: %+v, want zone-b, node storage-1, zonal (the agent exports over NBD)", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vol, err := pb.NewVolumeServiceClient(admin).CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "on-the-host", SizeGib: 1, Zone: "zone-b"})
	if err != nil {
		t.Fatalf("create a volume in the registered pool's zone: %v", err)
	}
	if vol.Pool != "pool-r" {
		t.Fatalf("volume in pool %q, want pool-r", vol.Pool)
	}
	if _, err := os.Stat(filepath.Join(poolDir, "volumes", vol.Id+".img")); err != nil {
		t.Fatalf("the volume's image is not on the storage host: %v", err)
	}

	// Its principal registers pool-r only.
	host, err := dial("unix://"+sock, hostToken)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	_, err = pb.NewPoolServiceClient(host).RegisterStorageHost(ctx, &pb.RegisterStorageHostRequest{Pool: "pool-x", Address: "127.0.0.1:1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("storage host of pool-r registering pool-x: %v, want PermissionDenied", err)
	}
	// An agent that does not hold the server's agent token is refused.
	wrong := startAgent(t, agentOptions{listen: "127.0.0.1:0", tokenFile: writeToken(t, "another-token"),
		pool: "name=pool-w,dir=" + filepath.Join(dir, "w") + ",zone=zone-b,node=storage-2"})
	_, err = pools.RegisterStorageHost(ctx, &pb.RegisterStorageHostRequest{Pool: "pool-w", Address: wrong})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), "agent token") {
		t.Fatalf("registering an agent with another token: %v, want Unavailable naming %s and the agent token", err, wrong)
	}
	// Nor is an address whose agent serves another pool; pool-r stays
	// served where it was.
	_, err = pools.RegisterStorageHost(ctx, &pb.RegisterStorageHostRequest{Pool: "pool-r", Address: wrong})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("re-registering pool-r at an agent serving another pool: %v, want Unavailable", err)
	}
	if got := waitPool(t, pools, "pool-r"); got.Zone != "zone-b" {
		t.Fatalf("pool-r after a failed re-registration: %+v", got)
	}

	// Restarted, the server serves pool-r from its record: the agent
	// registers again only in an hour.
	stop()
	startServer(t, so)
	waitPool(t, pools, "pool-r")
	d, err := pb.NewVolumeServiceClient(admin).DescribeVolume(ctx, &pb.DescribeVolumeRequest{VolumeId: vol.Id}, grpc.WaitForReady(true))
	if err != nil || d.StateReason != "" {
		t.Fatalf("the volume after the restart: %v %v, want it without a state reason", d, err)
	}
}

// A registered storage host is forgotten by DeregisterStorageHost (stowage
// pool deregister) only once no volume or snapshot is in its pool: the
// refusal names them. Then its pool is no longer listed, the call is a
// no-op again, a restarted server does not reconnect to it, and a pool of
// the server's command line is not one to deregister.
func TestDeregisterStorageHost_RefusedWhileInUse_ThenForgotten_AfterARestartToo(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	agentToken := writeToken(t, "the-clusters-agent-token")
	sock := filepath.Join(dir, "api.sock")
	so := serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a", agentTokenFile: agentToken,
		pools: []string{"name=pool-a,zone=zone-a,node=node-a"},
		auth:  authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-r"}}}
	stop := startServer(t, so)
	hostToken := filepath.Join(tokens, "storage-host@pool-r")
	waitFile(t, hostToken)
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	registered := make(chan struct{})
	go func() {
		agentDone <- runAgent(agentCtx, agentOptions{listen: "127.0.0.1:0", nbdListen: "127.0.0.1:0", tokenFile: agentToken,
			pool: "name=pool-r,dir=" + filepath.Join(dir, "host", "pool") + ",zone=zone-b,node=storage-1", server: "unix://" + sock,
			serverTokenFile: hostToken, registerInterval: time.Hour}, func(string, string) { close(registered) })
	}()
	agentStopped := false
	halt := func() {
		if !agentStopped {
			agentStopped = true
			stopAgent()
			if err := <-agentDone; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	t.Cleanup(halt)
	<-registered

	admin, err := dial("unix://"+sock, filepath.Join(tokens, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	pools := pb.NewPoolServiceClient(admin)
	waitPool(t, pools, "pool-r")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vols := pb.NewVolumeServiceClient(admin)
	vol, err := vols.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "on-the-host", SizeGib: 1, Zone: "zone-b"})
	if err != nil || vol.Pool != "pool-r" {
		t.Fatalf("create a volume in pool-r: %v %v", vol, err)
	}
	_, err = pools.DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-r"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), vol.Id) {
		t.Fatalf("deregistering pool-r with volume %s in it: %v, want FailedPrecondition naming the volume", vol.Id, err)
	}
	waitPool(t, pools, "pool-r")
	_, err = pools.DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-a"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "command line") {
		t.Fatalf("deregistering the server's own pool-a: %v, want FailedPrecondition saying it is on the command line", err)
	}
	if _, err := vols.DeleteVolume(ctx, &pb.DeleteVolumeRequest{VolumeId: vol.Id}); err != nil {
		t.Fatal(err)
	}
	// The agent goes first, or it would register again.
	halt()
	resp, err := pools.DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-r"})
	if err != nil || !resp.Deregistered || resp.Address == "" {
		t.Fatalf("deregister pool-r once empty: %v %v", resp, err)
	}
	listed := func() bool {
		resp, err := pools.ListPools(ctx, &pb.ListPoolsRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range resp.Pools {
			if p.Name == "pool-r" {
				return true
			}
		}
		return false
	}
	if listed() {
		t.Fatal("pool-r is still listed after its storage host was deregistered")
	}
	if resp, err := pools.DeregisterStorageHost(ctx, &pb.DeregisterStorageHostRequest{Pool: "pool-r"}); err != nil || resp.Deregistered {
		t.Fatalf("deregister pool-r again: %v %v, want a no-op", resp, err)
	}
	_, err = vols.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "nowhere", SizeGib: 1, Zone: "zone-b"})
	if err == nil {
		t.Fatal("a volume was created in zone-b with its only storage host deregistered")
	}
	stop()
	startServer(t, so)
	waitPool(t, pools, "pool-a")
	if listed() {
		t.Fatal("a restarted server serves pool-r again from a record deregistration removed")
	}
}

// A storage host serving the agent API with TLS (--tls-cert-file) is
// reached by servers that trust its CA: the registering one
// (--agent-ca-file) and one naming it (--agent ...,ca-file=); a server
// that does not trust it does not reach it.
func TestStorageHostOverTLS_ServersTrustItsCA(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, dir, "ca")
	cert, key := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	ca.Issue(t, cert, key, 1, []string{"127.0.0.1"})
	tokens := filepath.Join(dir, "tokens")
	agentToken := writeToken(t, "the-clusters-agent-token")
	sock := filepath.Join(dir, "api.sock")
	startServer(t, serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a", agentTokenFile: agentToken, agentCAFile: ca.File,
		pools: []string{"name=pool-a,zone=zone-a,node=node-a"}, auth: authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-t"}}})
	hostToken := filepath.Join(tokens, "storage-host@pool-t")
	waitFile(t, hostToken)
	api := startAgent(t, agentOptions{listen: "127.0.0.1:0", nbdListen: "127.0.0.1:0", tokenFile: agentToken, tlsCertFile: cert, tlsKeyFile: key,
		pool: "name=pool-t,dir=" + filepath.Join(dir, "host") + ",zone=zone-b,node=storage-1", server: "unix://" + sock, serverTokenFile: hostToken,
		registerInterval: time.Hour})
	admin, err := dial("unix://"+sock, filepath.Join(tokens, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	waitPool(t, pb.NewPoolServiceClient(admin), "pool-t")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pools := map[string]server.Pool{}
	closeAll, err := addAgentPools(ctx, []string{"name=named,address=" + api + ",token-file=" + agentToken + ",ca-file=" + ca.File}, pools, map[string]server.BlockExporter{}, quietLog())
	if err != nil {
		t.Fatalf("--agent with ca-file: %v", err)
	}
	closeAll()
	defer func(d time.Duration) { agentDialTimeout = d }(agentDialTimeout)
	agentDialTimeout = 2 * time.Second
	if closeAll, err := addAgentPools(ctx, []string{"name=clear,address=" + api + ",token-file=" + agentToken}, map[string]server.Pool{}, map[string]server.BlockExporter{}, quietLog()); err == nil {
		closeAll()
		t.Fatal("a server without the agent's CA reached its TLS agent API")
	}
}

// With --agent-token-per-host the server presents each registering storage
// host the token derived for its pool: two hosts each hold only their own
// (`stowage token agent POOL` prints it), both are served, and one host's
// token is refused by the other's agent API.
func TestAgentTokenPerHost_EachHostItsOwn_OneOpensNoOther(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	cluster := writeToken(t, "the-clusters-agent-token")
	sock := filepath.Join(dir, "api.sock")
	startServer(t, serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a",
		agentTokenFile: cluster, agentTokenPerHost: true, pools: []string{"name=pool-a,zone=zone-a,node=node-a"},
		auth: authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-r", "pool-s"}}})
	waitFile(t, filepath.Join(tokens, "admin"))
	admin, err := dial("unix://"+sock, filepath.Join(tokens, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	hostToken := map[string]string{}
	api := map[string]string{}
	for _, pool := range []string{"pool-r", "pool-s"} {
		serverToken := filepath.Join(tokens, "storage-host@"+pool)
		waitFile(t, serverToken)
		ao := agentOptions{listen: "127.0.0.1:0", dataDir: filepath.Join(dir, pool),
			pool: "name=" + pool + ",dir=" + filepath.Join(dir, pool, "pool") + ",zone=zone-b,node=" + pool, server: "unix://" + sock,
			serverTokenFile: serverToken, registerInterval: time.Hour}
		if pool == "pool-r" {
			// pool-r's token is given to it in a file (`stowage token agent`);
			// pool-s asks the server for its own (--token-from-server).
			own := filepath.Join(dir, pool+".agent-token")
			var out bytes.Buffer
			root := NewRoot(&out, &out)
			root.SetArgs([]string{"token", "agent", pool, "--agent-token-file", cluster, "--out-file", own})
			if err := root.Execute(); err != nil {
				t.Fatalf("stowage token agent %s: %v: %s", pool, err, out.String())
			}
			ao.tokenFile = own
		} else {
			ao.tokenFromServer = true
		}
		api[pool] = startAgent(t, ao)
		waitPool(t, pb.NewPoolServiceClient(admin), pool)
		own := ao.tokenFile
		if ao.tokenFromServer {
			own = agentTokenCacheFile(ao.dataDir, pool)
		}
		tok, err := auth.ReadTokenFile(own) // refuses a file others can read
		if err != nil {
			t.Fatal(err)
		}
		hostToken[pool] = tok
	}
	if hostToken["pool-s"] != auth.StorageHostAgentToken("the-clusters-agent-token", "pool-s") {
		t.Fatal("the token pool-s was given by the server is not the one derived for it")
	}
	// A host's principal gets its own pool's token, not another's.
	rconn, err := dial("unix://"+sock, filepath.Join(tokens, "storage-host@pool-r"))
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close()
	_, err = pb.NewPoolServiceClient(rconn).GetStorageHostAgentToken(context.Background(), &pb.GetStorageHostAgentTokenRequest{Pool: "pool-s"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "pool-s") {
		t.Fatalf("pool-r's principal asks for pool-s's agent token: %v; want PERMISSION_DENIED", err)
	}
	if hostToken["pool-r"] == hostToken["pool-s"] || hostToken["pool-r"] == "the-clusters-agent-token" {
		t.Fatalf("the hosts' tokens are not their own: %q, %q", hostToken["pool-r"], hostToken["pool-s"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = agentapi.Dial(ctx, agentapi.ClientConfig{Name: "pool-s", Address: api["pool-s"], Token: hostToken["pool-r"], CallTimeout: 5 * time.Second})
	if status.Code(errors.Unwrap(err)) != codes.Unauthenticated && !strings.Contains(fmt.Sprint(err), "Unauthenticated") {
		t.Fatalf("pool-r's token against pool-s's agent API: %v; want it refused (UNAUTHENTICATED)", err)
	}
}

// An agent told to take its token from a server that presents one token to
// every host (no --agent-token-per-host) does not start, and says why.
func TestAgentTokenFromServer_ServerWithoutPerHostTokens_RefusedWithTheReason(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	sock := filepath.Join(dir, "api.sock")
	startServer(t, serverOptions{dataDir: dir, listen: "unix://" + sock, zone: "zone-a", node: "node-a",
		agentTokenFile: writeToken(t, "the-clusters-agent-token"), pools: []string{"name=pool-a,zone=zone-a,node=node-a"},
		auth: authOptions{bootstrapTokensDir: tokens, bootstrapStorageHosts: []string{"pool-r"}}})
	serverToken := filepath.Join(tokens, "storage-host@pool-r")
	waitFile(t, serverToken)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := runAgent(ctx, agentOptions{listen: "127.0.0.1:0", tokenFromServer: true, dataDir: filepath.Join(dir, "host"),
		pool: "name=pool-r,dir=" + filepath.Join(dir, "host", "pool") + ",zone=zone-b,node=storage-1", server: "unix://" + sock,
		serverTokenFile: serverToken, registerInterval: time.Hour}, nil)
	if err == nil || !strings.Contains(err.Error(), "--agent-token-per-host") || !strings.Contains(err.Error(), "pool-r") {
		t.Fatalf("agent --token-from-server against a server with one token for all: %v; want an error naming pool-r and --agent-token-per-host", err)
	}
	if _, serr := os.Stat(agentTokenCacheFile(filepath.Join(dir, "host"), "pool-r")); !os.IsNotExist(serr) {
		t.Fatalf("a token file was kept though none was given: %v", serr)
	}
}
