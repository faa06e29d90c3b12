package secrets

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want time.Duration
		ok   bool
	}{
		{"rate(1 day)", 24 * time.Hour, true},
		{"rate(30 days)", 30 * 24 * time.Hour, true},
		{"rate(4 hours)", 4 * time.Hour, true},
		{"rate(1 minute)", time.Minute, true},
		{"rate(90 minutes)", 90 * time.Minute, true},
		{"rate(1000 days)", 1000 * 24 * time.Hour, true},
		{"rate(1001 days)", 0, false},
		{"rate(0 days)", 0, false},
		{"rate(1 week)", 0, false},
		{"rate(1day)", 0, false},
		{"cron(0 16 1,15 * ? *)", 0, false},
		{"30d", 0, false},
		{"", 0, false},
	} {
		got, err := ParseSchedule(tc.expr)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseSchedule(%q) = %v, %v; want %v (ok %t)", tc.expr, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSchedule(%q): %v is not ErrInvalid", tc.expr, err)
		}
	}
}

// clock is a settable now for the service.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newClockEnv is a service on a settable clock with secret db.
func newClockEnv(t *testing.T) (*env, *clock) {
	e := newEnv(t)
	c := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	e.sm.now = c.now
	mustCreate(t, e.sm, "db", `{"password":"old"}`)
	return e, c
}

func TestRotate_Schedule_NextRotationDueThenRotated_CancelStops(t *testing.T) {
	ctx := context.Background()
	e, c := newClockEnv(t)
	oldID, _ := current(t, e.sm, "db")

	// Not now: only the schedule is saved.
	sec, vid, err := e.sm.Rotate(ctx, "db", RotateInput{Schedule: "rate(1 hour)", NoRotateImmediately: true})
	if err != nil || vid != "" {
		t.Fatalf("Rotate without rotating now = %q, %v", vid, err)
	}
	if !sec.RotationEnabled || sec.RotationSchedule != "rate(1 hour)" || !sec.NextRotation.Equal(c.now().Add(time.Hour)) || !sec.LastRotated.IsZero() {
		t.Fatalf("after scheduling: enabled %t schedule %q next %v last %v", sec.RotationEnabled, sec.RotationSchedule, sec.NextRotation, sec.LastRotated)
	}
	if id, _ := current(t, e.sm, "db"); id != oldID {
		t.Fatal("scheduling without rotating now rotated")
	}
	if due, _ := e.sm.DueRotations(ctx, c.now().Add(59*time.Minute)); len(due) != 0 {
		t.Fatalf("due before the hour: %v", due)
	}
	c.add(time.Hour)
	due, err := e.sm.DueRotations(ctx, c.now())
	if err != nil || len(due) != 1 || due[0] != "db" {
		t.Fatalf("due after the hour: %v, %v", due, err)
	}
	// The saved schedule and generator are used.
	sec, newID, err := e.sm.Rotate(ctx, due[0], RotateInput{})
	if err != nil {
		t.Fatal(err)
	}
	if !sec.LastRotated.Equal(c.now()) || !sec.NextRotation.Equal(c.now().Add(time.Hour)) || !sec.RotationEnabled {
		t.Fatalf("after the scheduled rotation: last %v next %v enabled %t", sec.LastRotated, sec.NextRotation, sec.RotationEnabled)
	}
	if id, _ := current(t, e.sm, "db"); id != newID {
		t.Fatalf("AWSCURRENT is %s, want the rotated %s", id, newID)
	}
	if due, _ := e.sm.DueRotations(ctx, c.now()); len(due) != 0 {
		t.Fatalf("still due right after rotating: %v", due)
	}

	sec, err = e.sm.CancelRotation(ctx, "db")
	if err != nil || sec.RotationEnabled || sec.RotationSchedule != "" || !sec.NextRotation.IsZero() {
		t.Fatalf("after cancel: %+v, %v", sec, err)
	}
	if due, _ := e.sm.DueRotations(ctx, c.now().Add(48*time.Hour)); len(due) != 0 {
		t.Fatalf("due after cancel: %v", due)
	}
	// On demand still works, and does not turn the schedule back on.
	if sec, _, err = e.sm.Rotate(ctx, "db", RotateInput{}); err != nil || sec.RotationEnabled {
		t.Fatalf("on-demand rotation after cancel: enabled %t, %v", sec != nil && sec.RotationEnabled, err)
	}

	for _, in := range []RotateInput{
		{NoRotateImmediately: true},
		{Schedule: "rate(2 weeks)"},
		{Generator: &Generator{}, Webhook: &Webhook{URL: "http://127.0.0.1:1/"}},
		{Webhook: &Webhook{URL: "ftp://example.com/"}},
		{Webhook: &Webhook{URL: "http://127.0.0.1:1/", Timeout: time.Hour}},
	} {
		if _, _, err := e.sm.Rotate(ctx, "db", in); !errors.Is(err, ErrInvalid) {
			t.Errorf("Rotate(%+v) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestRecordRotationFailure_ErrorSaved_RetryBacksOff_SuccessClears(t *testing.T) {
	ctx := context.Background()
	e, c := newClockEnv(t)
	if _, _, err := e.sm.Rotate(ctx, "db", RotateInput{Schedule: "rate(1 day)", NoRotateImmediately: true}); err != nil {
		t.Fatal(err)
	}
	c.add(24 * time.Hour)
	var delays []time.Duration
	for range 4 {
		sec, err := e.sm.RecordRotationFailure(ctx, "db", errors.New("secret db: rotation webhook http://h/: HTTP 503 (want 2xx)"))
		if err != nil {
			t.Fatal(err)
		}
		if sec.LastRotationError == "" || !sec.LastRotationErrorTime.Equal(c.now()) {
			t.Fatalf("failure not recorded: %+v", sec)
		}
		delays = append(delays, sec.NextRotation.Sub(c.now()))
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("retry delays %v, want %v", delays, want)
		}
	}
	if d := RetryDelay(30, 24*time.Hour); d != MaxRetryDelay {
		t.Fatalf("RetryDelay(30, 1 day) = %v, want the cap %v", d, MaxRetryDelay)
	}
	if d := RetryDelay(30, 2*time.Minute); d != 2*time.Minute {
		t.Fatalf("RetryDelay(30, 2 minutes) = %v, want the interval", d)
	}
	sec, _, err := e.sm.Rotate(ctx, "db", RotateInput{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.LastRotationError != "" || sec.RotationFailures != 0 || !sec.NextRotation.Equal(c.now().Add(24*time.Hour)) {
		t.Fatalf("after a rotation that worked: error %q failures %d next %v", sec.LastRotationError, sec.RotationFailures, sec.NextRotation)
	}
}

// webhookServer answers rotation requests on loopback with reply(req) and
// keeps the requests it got.
type webhookServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []WebhookRequest
	hdrs []http.Header
}

func newWebhook(t *testing.T, reply func(w http.ResponseWriter, r WebhookRequest)) *webhookServer {
	ws := &webhookServer{}
	ws.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req WebhookRequest
		if r.Method != http.MethodPost || json.Unmarshal(b, &req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		ws.mu.Lock()
		ws.reqs = append(ws.reqs, req)
		ws.hdrs = append(ws.hdrs, r.Header.Clone())
		ws.mu.Unlock()
		reply(w, req)
	}))
	t.Cleanup(ws.Close)
	return ws
}

func TestRotate_Webhook_ValueFromReply_PromotedLikeGenerator(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	sec0 := mustCreate(t, e.sm, "db", `{"password":"old"}`)
	oldID, _ := current(t, e.sm, "db")
	ws := newWebhook(t, func(w http.ResponseWriter, r WebhookRequest) {
		json.NewEncoder(w).Encode(map[string]string{"secretString": `{"password":"from-webhook-` + r.VersionID[:8] + `"}`})
	})
	sec, newID, err := e.sm.Rotate(ctx, "db", RotateInput{Webhook: &Webhook{URL: ws.URL + "/rotate"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ws.reqs) != 1 {
		t.Fatalf("webhook called %d times", len(ws.reqs))
	}
	got := ws.reqs[0]
	if got.SecretARN != sec0.ARN || got.Name != "db" || got.VersionID != newID || got.CurrentVersionID != oldID {
		t.Fatalf("webhook request %+v; want arn %s, name db, versionId %s, currentVersionId %s", got, sec0.ARN, newID, oldID)
	}
	if ws.hdrs[0].Get("Content-Type") != "application/json" || ws.hdrs[0].Get("Idempotency-Key") != newID {
		t.Fatalf("webhook headers %v", ws.hdrs[0])
	}
	if id, val := current(t, e.sm, "db"); id != newID || val != `{"password":"from-webhook-`+newID[:8]+`"}` {
		t.Fatalf("AWSCURRENT %s = %q", id, val)
	}
	if p := sec.stageHolder(StagePrevious); p == nil || p.ID != oldID || sec.stageHolder(StagePending) != nil {
		t.Fatalf("stages after webhook rotation: %+v", sec.Versions)
	}
	if sec.Webhook == nil || sec.Webhook.URL != ws.URL+"/rotate" || sec.Webhook.Timeout != DefaultWebhookTimeout {
		t.Fatalf("webhook not saved: %+v", sec.Webhook)
	}
	// The saved webhook rotates the next time; a binary reply makes a
	// binary version.
	bin := []byte{0, 1, 2, 0xff}
	ws2 := newWebhook(t, func(w http.ResponseWriter, _ WebhookRequest) {
		w.Write([]byte(`{"secretBinary":"` + base64.StdEncoding.EncodeToString(bin) + `"}`))
	})
	if _, _, err := e.sm.Rotate(ctx, "db", RotateInput{Webhook: &Webhook{URL: ws2.URL}}); err != nil {
		t.Fatal(err)
	}
	if _, id, err := e.sm.Rotate(ctx, "db", RotateInput{Token: strings.Repeat("a", 32)}); err != nil || id != strings.Repeat("a", 32) {
		t.Fatalf("rotation with the saved webhook: %s, %v", id, err)
	}
	if len(ws2.reqs) != 2 || ws2.reqs[1].VersionID != strings.Repeat("a", 32) {
		t.Fatalf("saved webhook requests: %+v", ws2.reqs)
	}
	_, v, val, err := e.sm.GetValue(ctx, "db", "", "")
	if err != nil || !v.Binary || string(val.Binary) != string(bin) {
		t.Fatalf("binary value from the webhook: %v %q %v", v, val.Binary, err)
	}
	// A generator given drops the webhook.
	sec, _, err = e.sm.Rotate(ctx, "db", RotateInput{Generator: &Generator{WholeValue: true}})
	if err != nil || sec.Webhook != nil {
		t.Fatalf("rotation with a generator after a webhook: webhook %+v, %v", sec.Webhook, err)
	}
}

func TestRotate_WebhookFails_ErrorNamesSecretURLStatus_NoValue_NothingWritten(t *testing.T) {
	ctx := context.Background()
	const leak = "LEAKED-VALUE-9f2c"
	for _, tc := range []struct {
		name   string
		reply  func(w http.ResponseWriter, r WebhookRequest)
		want   []string
		noLeak bool
	}{
		{"500", func(w http.ResponseWriter, _ WebhookRequest) { http.Error(w, leak, http.StatusInternalServerError) }, []string{"HTTP 500"}, true},
		{"404", func(w http.ResponseWriter, _ WebhookRequest) { http.Error(w, leak, http.StatusNotFound) }, []string{"HTTP 404"}, true},
		{"redirect", func(w http.ResponseWriter, _ WebhookRequest) {
			w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
			w.WriteHeader(http.StatusFound)
		}, []string{"HTTP 302"}, true},
		{"not JSON", func(w http.ResponseWriter, _ WebhookRequest) { w.Write([]byte(leak)) }, []string{"HTTP 200", "secretString"}, true},
		{"no value", func(w http.ResponseWriter, _ WebhookRequest) { w.Write([]byte(`{"other":"` + leak + `"}`)) }, []string{"HTTP 200", "secretBinary"}, true},
		{"both values", func(w http.ResponseWriter, _ WebhookRequest) {
			w.Write([]byte(`{"secretString":"` + leak + `","secretBinary":"AAAA"}`))
		}, []string{"HTTP 200"}, true},
		{"bad base64", func(w http.ResponseWriter, _ WebhookRequest) { w.Write([]byte(`{"secretBinary":"` + leak + `!"}`)) }, []string{"HTTP 200"}, true},
		{"too large", func(w http.ResponseWriter, _ WebhookRequest) {
			w.Write([]byte(`{"secretString":"` + strings.Repeat("x", MaxValueSize+1) + `"}`))
		}, []string{"HTTP 200", "larger than"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			mustCreate(t, e.sm, "db", `{"password":"old"}`)
			oldID, _ := current(t, e.sm, "db")
			ws := newWebhook(t, tc.reply)
			_, _, err := e.sm.Rotate(ctx, "db", RotateInput{Webhook: &Webhook{URL: ws.URL + "/hook"}})
			if !errors.Is(err, ErrRotation) {
				t.Fatalf("Rotate = %v, want ErrRotation", err)
			}
			for _, w := range append(tc.want, "secret db", ws.URL+"/hook") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), leak) {
				t.Errorf("error %q holds the reply's body", err)
			}
			sec, _ := e.sm.Describe(ctx, "db")
			if id, _ := current(t, e.sm, "db"); id != oldID || len(sec.Versions) != 1 || sec.Webhook != nil {
				t.Fatalf("a failed webhook rotation changed the secret: current %s, versions %+v, webhook %+v", id, sec.Versions, sec.Webhook)
			}
		})
	}
}

func TestRotate_WebhookSlowerThanTimeout_Fails(t *testing.T) {
	e := newEnv(t)
	mustCreate(t, e.sm, "db", `{"password":"old"}`)
	release := make(chan struct{})
	ws := newWebhook(t, func(w http.ResponseWriter, _ WebhookRequest) { <-release })
	defer close(release)
	start := time.Now()
	_, _, err := e.sm.Rotate(context.Background(), "db", RotateInput{Webhook: &Webhook{URL: ws.URL, Timeout: time.Second}})
	if !errors.Is(err, ErrRotation) || !strings.Contains(err.Error(), "no reply within 1s") || !strings.Contains(err.Error(), ws.URL) {
		t.Fatalf("Rotate with a slow webhook = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the timeout of 1s took %v", d)
	}
}

func TestRotate_WebhookURLPassword_NotInErrors(t *testing.T) {
	e := newEnv(t)
	mustCreate(t, e.sm, "db", `{"password":"old"}`)
	ws := newWebhook(t, func(w http.ResponseWriter, _ WebhookRequest) { w.WriteHeader(http.StatusServiceUnavailable) })
	u := strings.Replace(ws.URL, "http://", "http://rot:hunter2@", 1)
	_, _, err := e.sm.Rotate(context.Background(), "db", RotateInput{Webhook: &Webhook{URL: u}})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Rotate = %v; want HTTP 503 without the URL's password", err)
	}
}
