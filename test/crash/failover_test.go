package crash

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/cli"
	"github.com/stowage-io/stowage/internal/testutil/etcdtest"
)

// failoverEnv is two or more `stowage server` processes on one etcd, each on
// a loopback TCP port of its own. They share the data directory: the pool,
// the KMS master key and the token files are the same for all of them, as
// shared storage hosts will be once agents are remote.
type failoverEnv struct {
	etcd    *etcdtest.Etcd
	dataDir string
	token   string
}

func newFailoverEnv(t *testing.T) *failoverEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "stwfailover")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &failoverEnv{etcd: etcdtest.Start(t), dataDir: dir}
}

func (e *failoverEnv) startServer(t *testing.T, name, addr string) *proc {
	t.Helper()
	return startProc(t, name, "", "server",
		"--store", "etcd://"+e.etcd.Endpoint, "--store-prefix", "/failover",
		"--listen", addr, "--advertise-address", addr,
		"--data-dir", e.dataDir, "--node", "node-a", "--local-handoff", filepath.Join(e.dataDir, "handoff.sock"),
		"--pool", "name=p,dir="+filepath.Join(e.dataDir, "pool")+",zone=zone-a,node=node-a")
}

// startLeader starts the first server, which leads alone, and waits until
// it serves; its token files are what the clients use.
func (e *failoverEnv) startLeader(t *testing.T, name, addr string) (*proc, pb.VolumeServiceClient) {
	t.Helper()
	p := e.startServer(t, name, addr)
	waitReady(t, p, func(ctx context.Context) error {
		_, err := os.Stat(filepath.Join(e.dataDir, "tokens", "admin"))
		return err
	})
	c := e.volumes(t, addr)
	waitServing(t, p, c, 20*time.Second)
	return p, c
}

// volumes is a Volume client to addr as the administrator.
func (e *failoverEnv) volumes(t *testing.T, addr string) pb.VolumeServiceClient {
	t.Helper()
	if e.token == "" {
		tok, err := auth.ReadTokenFile(filepath.Join(e.dataDir, "tokens", "admin"))
		if err != nil {
			t.Fatalf("admin token (written by the leader): %v", err)
		}
		e.token = tok
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.TokenCredentials{Token: e.token}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewVolumeServiceClient(conn)
}

// createWithCLI runs `stowage volume create` against endpoints (several,
// comma-separated) and says whether it was acknowledged.
func (e *failoverEnv) createWithCLI(endpoints, name string) (bool, string) {
	var out, errOut bytes.Buffer
	code := cli.Execute([]string{"--endpoint", endpoints, "--token-file", filepath.Join(e.dataDir, "tokens", "admin"), "--timeout", "30s",
		"volume", "create", "--name", name, "--size", "1"}, &out, &errOut)
	return code == 0, errOut.String()
}

func listVolumeNames(t *testing.T, c pb.VolumeServiceClient) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	token := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.ListVolumes(ctx, &pb.ListVolumesRequest{PageToken: token})
		cancel()
		if err != nil {
			t.Fatalf("ListVolumes: %v", err)
		}
		for _, v := range resp.Volumes {
			names[v.Name] = true
		}
		if token = resp.NextPageToken; token == "" {
			return names
		}
	}
}

// waitServing polls addr until a read succeeds and returns when it did.
func waitServing(t *testing.T, p *proc, c pb.VolumeServiceClient, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ListVolumes(ctx, &pb.ListVolumesRequest{PageSize: 1})
		cancel()
		if err == nil {
			return time.Now()
		}
		if p.exited() {
			t.Fatalf("%s exited (%v); output:\n%s", p.name, p.state, p.out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not serve after %s: %v", p.name, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFailover_LeaderKilled_StandbyServesWithin10sNoRecordLost: two servers
// on one etcd; the leader is SIGKILLed while a client keeps creating
// volumes through both endpoints. The standby must serve within 10 s, the
// client must follow it, and every create acknowledged before, during and
// after the failover must be there.
func TestFailover_LeaderKilled_StandbyServesWithin10sNoRecordLost(t *testing.T) {
	e := newFailoverEnv(t)
	addrA, addrB := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	a, _ := e.startLeader(t, "server a", addrA)
	b := e.startServer(t, "server b", addrB)
	toB := e.volumes(t, addrB)
	waitReady(t, b, func(ctx context.Context) error {
		_, err := toB.ListVolumes(ctx, &pb.ListVolumesRequest{})
		if status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "the leader is at "+addrA) {
			return nil
		}
		return fmt.Errorf("standby answered %v, want UNAVAILABLE naming the leader %s", err, addrA)
	})

	endpoints := addrA + "," + addrB
	var acked []string
	create := func(name string) {
		t.Helper()
		ok, msg := e.createWithCLI(endpoints, name)
		if !ok {
			t.Fatalf("volume create %s through %s: %s", name, endpoints, msg)
		}
		acked = append(acked, name)
	}
	for i := range 5 {
		create(fmt.Sprintf("before-%d", i))
	}

	if err := syscall.Kill(a.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-a.done
	// A client that starts right after the kill: its create waits through
	// the failover and lands on b.
	clientDone := make(chan time.Time, 1)
	go func() {
		ok, msg := e.createWithCLI(endpoints, "during")
		if !ok {
			t.Errorf("volume create during the failover: %s", msg)
		}
		clientDone <- time.Now()
	}()
	served := waitServing(t, b, toB, 15*time.Second)
	failover := served.Sub(killed)
	t.Logf("leader failover: the standby served %s after the leader's SIGKILL", failover.Round(time.Millisecond))
	if failover >= 10*time.Second {
		t.Errorf("the standby served %s after the leader died, want under 10 s", failover)
	}
	clientAt := <-clientDone
	t.Logf("the client given both endpoints had its create acknowledged %s after the kill", clientAt.Sub(killed).Round(time.Millisecond))
	if !t.Failed() {
		acked = append(acked, "during")
	}
	for i := range 5 {
		create(fmt.Sprintf("after-%d", i))
	}

	got := listVolumeNames(t, toB)
	for _, n := range acked {
		if !got[n] {
			t.Errorf("acknowledged volume %s is missing after the failover", n)
		}
	}
}

// TestFailover_PausedLeader_WriteRefused: a leader paused (SIGSTOP) past its
// lease is replaced; a create it received while paused, served when it
// resumes, must not land, and the old leader must stop.
func TestFailover_PausedLeader_WriteRefused(t *testing.T) {
	e := newFailoverEnv(t)
	addrA, addrB := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	a, toA := e.startLeader(t, "server a", addrA)
	b := e.startServer(t, "server b", addrB)
	toB := e.volumes(t, addrB)

	if err := syscall.Kill(a.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Resumed in any case, so that the cleanup's SIGTERM can reach it.
	t.Cleanup(func() { syscall.Kill(a.cmd.Process.Pid, syscall.SIGCONT) })
	// Sent to the paused leader: it waits in a's socket until a resumes.
	refused := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := toA.CreateVolume(ctx, &pb.CreateVolumeRequest{Name: "from-paused-leader", SizeGib: 1})
		refused <- err
	}()
	stopped := time.Now()
	waitServing(t, b, toB, 15*time.Second)
	t.Logf("the standby served %s after the leader was paused", time.Since(stopped).Round(time.Millisecond))
	if _, err := toB.CreateVolume(t.Context(), &pb.CreateVolumeRequest{Name: "from-new-leader", SizeGib: 1}); err != nil {
		t.Fatalf("create on the new leader: %v", err)
	}

	if err := syscall.Kill(a.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := <-refused; status.Code(err) != codes.Unavailable {
		t.Errorf("create served by the deposed leader = %v, want UNAVAILABLE", err)
	} else {
		t.Logf("deposed leader answered: %v", err)
	}
	got := listVolumeNames(t, toB)
	if got["from-paused-leader"] {
		t.Errorf("the deposed leader's volume was recorded")
	}
	if !got["from-new-leader"] {
		t.Errorf("the new leader's volume is missing")
	}
	select {
	case <-a.done:
		if !strings.Contains(a.out.String(), "lease of this server's leadership") {
			t.Errorf("deposed leader stopped without saying why; output:\n%s", a.out)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("the deposed leader still runs 15 s after it resumed")
	}
}
