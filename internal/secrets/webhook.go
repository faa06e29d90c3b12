package secrets

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

const (
	// DefaultWebhookTimeout bounds one webhook call unless the secret says
	// otherwise; MaxWebhookTimeout is the most it may say (a rotation
	// Lambda's limit).
	DefaultWebhookTimeout = 30 * time.Second
	MaxWebhookTimeout     = 15 * time.Minute
)

// Webhook is a custom rotation, the counterpart of a rotation Lambda: the
// server POSTs a WebhookRequest to URL and takes the new value from the
// WebhookReply.
type Webhook struct {
	URL     string        `json:"url"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// WebhookRequest is the JSON body POSTed to a rotation webhook. VersionID
// is the id the new version will have: a webhook that is called again with
// the same id (a retried request) should answer with the same value.
type WebhookRequest struct {
	SecretARN        string `json:"secretArn"`
	Name             string `json:"name"`
	VersionID        string `json:"versionId"`
	CurrentVersionID string `json:"currentVersionId,omitempty"`
}

// WebhookReply is what a webhook answers with: exactly one of the two.
// SecretBinary travels as base64.
type WebhookReply struct {
	SecretString *string `json:"secretString,omitempty"`
	SecretBinary []byte  `json:"secretBinary,omitempty"`
}

func (w Webhook) withDefaults() (Webhook, error) {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return w, fmt.Errorf("%w: rotation webhook %q must be an http:// or https:// URL with a host", ErrInvalid, redactURL(w.URL))
	}
	if w.Timeout == 0 {
		w.Timeout = DefaultWebhookTimeout
	}
	if w.Timeout < time.Second || w.Timeout > MaxWebhookTimeout {
		return w, fmt.Errorf("%w: rotation webhook timeout %s is not 1s–15m", ErrInvalid, w.Timeout)
	}
	return w, nil
}

// redactURL hides a password in a URL's user information.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func newWebhookClient() *http.Client {
	return &http.Client{
		// A redirect is answered as it is (a 3xx fails the rotation): the
		// request is not re-sent somewhere the secret did not name.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// callWebhook asks the secret's webhook for the value of version id. Its
// errors name the secret, the URL and the HTTP status; never the body of
// the reply, which may hold the value.
func (s *Service) callWebhook(ctx context.Context, sec *Secret, w Webhook, versionID string) (Value, error) {
	req := WebhookRequest{SecretARN: sec.ARN, Name: sec.Name, VersionID: versionID}
	if cur := sec.stageHolder(StageCurrent); cur != nil {
		req.CurrentVersionID = cur.ID
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Value{}, err
	}
	where := redactURL(w.URL)
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: secret %s: rotation webhook %s: %s", ErrRotation, sec.Name, where, fmt.Sprintf(format, args...))
	}
	timeout := w.Timeout
	if timeout == 0 {
		timeout = DefaultWebhookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return Value{}, fail("%v", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Idempotency-Key", versionID)
	resp, err := s.webhookClient.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return Value{}, fail("no reply within %s", timeout)
		}
		return Value{}, fail("%v", err)
	}
	defer resp.Body.Close()
	// Base64 makes a binary value 4/3 its size; a little room for the JSON.
	const limit = MaxValueSize*4/3 + 4096
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return Value{}, fail("HTTP %d (want 2xx)", resp.StatusCode)
	}
	if err != nil {
		return Value{}, fail("HTTP %d, reading the reply: %v", resp.StatusCode, err)
	}
	if len(b) > limit {
		return Value{}, fail("HTTP %d, the reply is larger than %d bytes", resp.StatusCode, limit)
	}
	var reply WebhookReply
	// The decoder's message is left out: it may quote the body.
	if json.Unmarshal(b, &reply) != nil || (reply.SecretString == nil) == (reply.SecretBinary == nil) {
		return Value{}, fail(`HTTP %d, the reply is not {"secretString": "..."} or {"secretBinary": "<base64>"}`, resp.StatusCode)
	}
	v := Value{String: reply.SecretString, Binary: reply.SecretBinary}
	if err := validValue(sec.Name, v); err != nil {
		return Value{}, fail("HTTP %d, %v", resp.StatusCode, err)
	}
	return v, nil
}
