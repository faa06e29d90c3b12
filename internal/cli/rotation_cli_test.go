package cli_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/cli"
)

func TestSecretRotateCommands_ScheduleWebhookDescribeCancel(t *testing.T) {
	ep := startAPI(t)
	mustRun(t, ep, "secret", "create", "app/db", "--secret-string-file", writeFile(t, `{"password":"old"}`))

	// A schedule without rotating now: no version, the dates in describe.
	mustRun(t, ep, "secret", "rotate", "app/db", "--schedule", "rate(1 day)", "--no-rotate-immediately")
	out := mustRun(t, ep, "secret", "describe", "app/db")
	for _, want := range []string{"RotationEnabled", "true", "RotationRules", "rate(1 day)", "NextRotationDate", "LastRotatedDate", "RotatedBy", "generator"} {
		if !strings.Contains(out, want) {
			t.Errorf("describe does not show %q:\n%s", want, out)
		}
	}
	js := mustRun(t, ep, "secret", "describe", "app/db", "-o", "json")
	if jsonField(t, js, "rotationSchedule") != "rate(1 day)" || jsonField(t, js, "nextRotationTime") == "" || jsonField(t, js, "lastRotatedTime") != "" {
		t.Fatalf("describe -o json: %s", js)
	}

	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ VersionId string }
		json.NewDecoder(r.Body).Decode(&req)
		json.NewEncoder(w).Encode(map[string]string{"secretString": `{"password":"hook-` + req.VersionId + `"}`})
	}))
	defer hook.Close()
	vid := jsonField(t, mustRun(t, ep, "secret", "rotate", "app/db", "--webhook", hook.URL, "--webhook-timeout", "5s", "-o", "json"), "versionId")
	if got := mustRun(t, ep, "secret", "get-value", "app/db"); got != `{"password":"hook-`+vid+`"}`+"\n" {
		t.Fatalf("value after the webhook rotation: %q", got)
	}
	out = mustRun(t, ep, "secret", "describe", "app/db")
	if !strings.Contains(out, "webhook "+hook.URL+" (timeout 5s)") || strings.Contains(out, "LastRotatedDate   -") {
		t.Fatalf("describe after the webhook rotation:\n%s", out)
	}

	out = mustRun(t, ep, "secret", "cancel-rotation", "app/db", "-o", "json")
	if jsonField(t, out, "rotationEnabled") != "" || jsonField(t, out, "nextRotationTime") != "" {
		t.Fatalf("cancel-rotation: %s", out)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--webhook", hook.URL, "--json-key", "pw"}, cli.ExitUsage, "not both"},
		{[]string{"--webhook-timeout", "5s"}, cli.ExitUsage, "--webhook-timeout needs --webhook"},
		{[]string{"--webhook", hook.URL, "--webhook-timeout", "1500ms"}, cli.ExitUsage, "whole seconds"},
		{[]string{"--schedule", "rate(2 weeks)"}, cli.ExitInvalidInput, "rate(N days)"},
		{[]string{"--no-rotate-immediately"}, cli.ExitInvalidInput, "needs a schedule"},
		{[]string{"--webhook", "ftp://h/x"}, cli.ExitInvalidInput, "http:// or https://"},
	} {
		r := run(t, ep, append([]string{"secret", "rotate", "app/db"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("rotate %v: exit %d, %s; want exit %d and %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
	}
}
