package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stowage-io/stowage/internal/auth"
	"github.com/stowage-io/stowage/internal/testutil/apitest"
)

// call POSTs body to /<method> as Connect's unary JSON protocol and
// returns the status and the decoded JSON answer.
func call(t *testing.T, addr, token, method, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/"+method, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: answer is not JSON: %v: %q", method, err, b)
	}
	return resp.StatusCode, out
}

func TestHTTPAPI_JSONCalls_SameTokensAndErrorsAsGRPC(t *testing.T) {
	api := apitest.StartAuth(t, apitest.Auth{HTTP: true})
	ctx := context.Background()
	admin, _, err := api.Auth.Records.CreateToken(ctx, auth.AdminName, "http test")
	if err != nil {
		t.Fatal(err)
	}
	node, _, err := api.Auth.Records.CreateToken(ctx, auth.CSINodePrefix+"node-a", "http test")
	if err != nil {
		t.Fatal(err)
	}
	const create = "stowage.v1.VolumeService/CreateVolume"

	// No token: refused, and the answer says how to authenticate (over
	// HTTP nobody has unix-socket peer credentials).
	code, out := call(t, api.HTTPAddress, "", create, `{"name":"web","sizeGib":1}`)
	if code != http.StatusUnauthorized || out["code"] != "unauthenticated" || !strings.Contains(out["message"].(string), "Bearer") {
		t.Fatalf("no token: %d %v; want 401 unauthenticated naming Bearer", code, out)
	}
	// A wrong token: refused without echoing it.
	code, out = call(t, api.HTTPAddress, "stw_not-a-token", create, `{"name":"web","sizeGib":1}`)
	if code != http.StatusUnauthorized || strings.Contains(out["message"].(string), "stw_not-a-token") {
		t.Fatalf("wrong token: %d %v", code, out)
	}

	// The admin creates a volume; JSON in, JSON out, proto3 JSON names.
	code, vol := call(t, api.HTTPAddress, admin, create, `{"name":"web","sizeGib":2,"type":"gp3"}`)
	if code != http.StatusOK {
		t.Fatalf("CreateVolume: %d %v", code, vol)
	}
	id, _ := vol["id"].(string)
	if !strings.HasPrefix(id, "vol-") || vol["sizeGib"] != "2" || vol["type"] != "gp3" {
		t.Fatalf("CreateVolume answered %v", vol)
	}
	// The same call again is idempotent, as over gRPC (the name is the
	// client token).
	if code, again := call(t, api.HTTPAddress, admin, create, `{"name":"web","sizeGib":2,"type":"gp3"}`); code != http.StatusOK || again["id"] != id {
		t.Fatalf("CreateVolume again: %d %v, want volume %s", code, again, id)
	}
	code, list := call(t, api.HTTPAddress, admin, "stowage.v1.VolumeService/ListVolumes", `{}`)
	if code != http.StatusOK || !strings.Contains(mustJSON(t, list), id) {
		t.Fatalf("ListVolumes: %d %v, want %s in it", code, list, id)
	}

	// gRPC codes map to HTTP statuses and Connect's error codes.
	code, out = call(t, api.HTTPAddress, admin, "stowage.v1.VolumeService/DescribeVolume", `{"volumeId":"vol-00000000000000000"}`)
	if code != http.StatusNotFound || out["code"] != "not_found" {
		t.Fatalf("DescribeVolume of a missing volume: %d %v; want 404 not_found", code, out)
	}
	code, out = call(t, api.HTTPAddress, admin, create, `{"name":"bad","sizeGib":1,"type":"gp9"}`)
	if code != http.StatusBadRequest || out["code"] != "invalid_argument" {
		t.Fatalf("CreateVolume type gp9: %d %v; want 400 invalid_argument", code, out)
	}
	// Authorisation is the same as over gRPC: a node plugin's token may
	// not create volumes.
	code, out = call(t, api.HTTPAddress, node, create, `{"name":"x","sizeGib":1}`)
	if code != http.StatusForbidden || out["code"] != "permission_denied" {
		t.Fatalf("CreateVolume with a node's token: %d %v; want 403 permission_denied", code, out)
	}
	// A body that is not the request message is the caller's error.
	code, out = call(t, api.HTTPAddress, admin, create, `{"nosuchfield":1}`)
	if code != http.StatusBadRequest && code != http.StatusUnprocessableEntity {
		t.Fatalf("unknown field: %d %v; want a 4xx naming the field", code, out)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
