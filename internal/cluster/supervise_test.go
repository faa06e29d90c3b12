package cluster

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRestartIfDead_RestartsACrashedComponentThenGivesUp(t *testing.T) {
	c := testConfig(t)
	comp := Component{Name: "flaky", Cmd: Command{Path: "sleep", Args: []string{"60"}}}
	proc := c.process(comp.Name)
	restarts := map[string][]time.Time{}

	// Never started (no pid file): left alone.
	if msg, err := c.restartIfDead(comp, restarts); msg != "" || err != nil {
		t.Fatalf("not started: %q, %v", msg, err)
	}
	for i := 0; i < maxRestarts; i++ {
		writePidFile(proc.PidFile, 1<<22+1) // a pid that cannot exist: it crashed
		msg, err := c.restartIfDead(comp, restarts)
		if err != nil || !strings.Contains(msg, "restarted") {
			t.Fatalf("restart %d: %q, %v", i, msg, err)
		}
		// Running now: nothing to do.
		deadline := time.Now().Add(5 * time.Second)
		for st, _ := proc.State(); st != Running && time.Now().Before(deadline); st, _ = proc.State() {
			time.Sleep(20 * time.Millisecond)
		}
		if msg, err := c.restartIfDead(comp, restarts); msg != "" || err != nil {
			t.Fatalf("running: %q, %v", msg, err)
		}
		if _, err := proc.Stop(context.Background(), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	writePidFile(proc.PidFile, 1<<22+1)
	if _, err := c.restartIfDead(comp, restarts); err == nil || !strings.Contains(err.Error(), "leaving it dead") {
		t.Fatalf("after %d crashes: %v, want to give up", maxRestarts, err)
	}
}
