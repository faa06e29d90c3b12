package secrets

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/stowage-io/stowage/internal/faults"
	"github.com/stowage-io/stowage/internal/store"
)

const (
	alnum       = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

	// Crash points of a rotation (see internal/faults): after the new
	// version is written as AWSPENDING, and after AWSCURRENT moved to it.
	CrashPendingWritten = "rotate-secret:pending-written"
	CrashCurrentMoved   = "rotate-secret:current-moved"

	// MinRotationInterval and MaxRotationInterval bound a schedule. AWS
	// allows hours and days only; minutes are allowed here for testing.
	MinRotationInterval = time.Minute
	MaxRotationInterval = 1000 * 24 * time.Hour
	// FirstRetryDelay is how long a scheduled rotation that failed waits
	// before its first retry; each further failure doubles it, up to
	// MaxRetryDelay (and never beyond the schedule's interval).
	FirstRetryDelay = 10 * time.Second
	MaxRetryDelay   = time.Hour
)

var scheduleRE = regexp.MustCompile(`^rate\(([0-9]{1,6}) (minute|minutes|hour|hours|day|days)\)$`)

// ParseSchedule reads a rotation schedule, `rate(N days|hours|minutes)`
// (singular or plural), and returns its interval.
func ParseSchedule(expr string) (time.Duration, error) {
	m := scheduleRE.FindStringSubmatch(expr)
	if m == nil {
		return 0, fmt.Errorf("%w: rotation schedule %q is not rate(N days), rate(N hours) or rate(N minutes)", ErrInvalid, expr)
	}
	n, _ := strconv.Atoi(m[1])
	unit := map[string]time.Duration{"minute": time.Minute, "minutes": time.Minute, "hour": time.Hour, "hours": time.Hour,
		"day": 24 * time.Hour, "days": 24 * time.Hour}[m[2]]
	d := time.Duration(n) * unit
	if d < MinRotationInterval || d > MaxRotationInterval {
		return 0, fmt.Errorf("%w: rotation schedule %q: the interval must be 1 minute to 1000 days", ErrInvalid, expr)
	}
	return d, nil
}

func (g Generator) withDefaults() Generator {
	if g.Length == 0 {
		g.Length = DefaultPasswordLength
	}
	if g.JSONKey == "" && !g.WholeValue {
		g.JSONKey = "password"
	}
	return g
}

func (g Generator) password() (string, error) {
	if g.Length < 1 || g.Length > 4096 {
		return "", fmt.Errorf("%w: password length %d is not 1–4096", ErrInvalid, g.Length)
	}
	chars := alnum
	if !g.ExcludePunctuation {
		chars += punctuation
	}
	return randomString(g.Length, chars), nil
}

// RotateInput says how to rotate. Unset fields keep what the secret has
// saved from its last rotation.
type RotateInput struct {
	// Generator rotates with the built-in password generator (and drops a
	// saved webhook).
	Generator *Generator
	// Webhook rotates with a custom rotation: the value comes from a POST
	// to the URL.
	Webhook *Webhook
	// Schedule turns on scheduled rotation: `rate(N days|hours|minutes)`.
	Schedule string
	// NoRotateImmediately saves the settings and the schedule without
	// rotating now: the first rotation is one interval from now.
	NoRotateImmediately bool
	// Token is the new version's id (32–64 characters); default a UUID.
	Token string
}

// Rotate makes a new AWSCURRENT version with the generator or the webhook
// (given, else saved, else a 32-character password in key "password" of a
// JSON object), and saves the settings for the next rotation. With a
// schedule (given or saved) it also sets the next rotation time.
//
// It takes two transactions, so that a crash leaves either the old or the
// new version current: first the new version is written as AWSPENDING
// (the old one stays AWSCURRENT); then AWSCURRENT moves to it in one
// transaction. A crash in between leaves a stale AWSPENDING version that
// the next rotation replaces. Nothing is saved when the new value cannot
// be made (a webhook that fails, a value that is not a JSON object).
//
// With NoRotateImmediately it returns no version id.
func (s *Service) Rotate(ctx context.Context, ref string, in RotateInput) (*Secret, string, error) {
	if err := validToken(in.Token); err != nil {
		return nil, "", err
	}
	if in.Generator != nil && in.Webhook != nil {
		return nil, "", fmt.Errorf("%w: secret %s: rotate with the generator or with a webhook, not both", ErrInvalid, ref)
	}
	var wh *Webhook
	if in.Webhook != nil {
		w, err := in.Webhook.withDefaults()
		if err != nil {
			return nil, "", fmt.Errorf("secret %s: %w", ref, err)
		}
		wh = &w
	}
	var every time.Duration
	if in.Schedule != "" {
		d, err := ParseSchedule(in.Schedule)
		if err != nil {
			return nil, "", err
		}
		every = d
	}
	sec, err := s.get(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	if err := notDeleted(sec); err != nil {
		return nil, "", err
	}
	g := Generator{}
	switch {
	case in.Generator != nil:
		g = *in.Generator
	case sec.Rotation != nil:
		g = *sec.Rotation
	}
	g = g.withDefaults()
	if wh == nil && in.Generator == nil && sec.Webhook != nil {
		wh = sec.Webhook
	}
	schedule := in.Schedule
	if schedule == "" && sec.RotationEnabled {
		schedule = sec.RotationSchedule
		if every, err = ParseSchedule(schedule); err != nil {
			return nil, "", err
		}
	}
	// save records the settings on the secret as read in a transaction.
	save := func(sec *Secret) {
		sec.Rotation = &g
		sec.Webhook = wh
		if schedule != "" {
			sec.RotationEnabled, sec.RotationSchedule = true, schedule
		}
	}
	if in.NoRotateImmediately {
		if schedule == "" {
			return nil, "", fmt.Errorf("%w: secret %s: not rotating now needs a schedule (rate(N days))", ErrInvalid, sec.Name)
		}
		sec, err := s.update(ctx, sec.ARN, func(_ store.Tx, sec *Secret) error {
			if err := notDeleted(sec); err != nil {
				return err
			}
			save(sec)
			sec.NextRotation = s.now().UTC().Add(every)
			return nil
		})
		return sec, "", err
	}
	if wh == nil {
		if _, err := g.password(); err != nil {
			return nil, "", err
		}
	}
	token := in.Token
	if token == "" {
		token = newVersionID()
	}
	if sec.version(token) != nil {
		return nil, "", fmt.Errorf("%w: version %s of secret %s exists", ErrExists, token, sec.Name)
	}
	var next Value
	if wh != nil {
		next, err = s.callWebhook(ctx, sec, *wh, token)
	} else {
		next, err = s.generate(ctx, sec, g)
	}
	if err != nil {
		return nil, "", err
	}
	env, err := s.kms.Seal(ctx, sec.KMSKeyID, next.bytes(), encContext(sec.ARN, token))
	if err != nil {
		return nil, "", fmt.Errorf("secret %s: %w", sec.Name, err)
	}
	_, err = s.update(ctx, sec.ARN, func(tx store.Tx, sec *Secret) error {
		if err := notDeleted(sec); err != nil {
			return err
		}
		if sec.version(token) != nil {
			return fmt.Errorf("%w: version %s of secret %s exists", ErrExists, token, sec.Name)
		}
		save(sec)
		return s.addVersion(tx, sec, token, env, next.Binary != nil, []string{StagePending})
	})
	if err != nil {
		return nil, "", err
	}
	if s.afterPending != nil {
		if err := s.afterPending(); err != nil {
			return nil, "", err
		}
	}
	faults.Point(CrashPendingWritten)
	sec, err = s.update(ctx, sec.ARN, func(_ store.Tx, sec *Secret) error {
		if sec.version(token) == nil {
			return fmt.Errorf("%w: version %s of secret %s went away during rotation", ErrNotFound, token, sec.Name)
		}
		sec.moveStage(StageCurrent, token)
		sec.removeStage(StagePending, token)
		now := s.now().UTC()
		sec.LastRotated = now
		if sec.RotationEnabled && every > 0 {
			sec.NextRotation = now.Add(every)
		}
		sec.LastRotationError, sec.LastRotationErrorTime, sec.RotationFailures = "", time.Time{}, 0
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	faults.Point(CrashCurrentMoved)
	return sec, token, nil
}

// generate makes the generator's next value: the password as the whole
// value, or put into its key of the current JSON object value.
func (s *Service) generate(ctx context.Context, sec *Secret, g Generator) (Value, error) {
	pw, err := g.password()
	if err != nil {
		return Value{}, err
	}
	if g.WholeValue {
		return StringValue(pw), nil
	}
	obj := map[string]any{}
	if cur := sec.stageHolder(StageCurrent); cur != nil {
		val, err := s.open(ctx, sec, cur)
		if err != nil {
			return Value{}, err
		}
		// The value is never part of the error: only its shape.
		if val.String == nil || json.Unmarshal([]byte(*val.String), &obj) != nil || obj == nil {
			return Value{}, fmt.Errorf("%w: secret %s: the current value is not a JSON object, so the generator cannot set key %q in it (rotate the whole value instead)", ErrInvalid, sec.Name, g.JSONKey)
		}
	}
	obj[g.JSONKey] = pw
	b, err := json.Marshal(obj)
	if err != nil {
		return Value{}, err
	}
	return StringValue(string(b)), nil
}

// CancelRotation turns scheduled rotation off. The generator or webhook
// settings are kept for an on-demand rotation, as AWS keeps the rotation
// function.
func (s *Service) CancelRotation(ctx context.Context, ref string) (*Secret, error) {
	if _, err := s.get(ctx, ref); err != nil {
		return nil, err
	}
	return s.update(ctx, ref, func(_ store.Tx, sec *Secret) error {
		if err := notDeleted(sec); err != nil {
			return err
		}
		sec.RotationEnabled, sec.RotationSchedule, sec.NextRotation = false, "", time.Time{}
		sec.RotationFailures = 0
		return nil
	})
}

// DueRotations names the secrets whose scheduled rotation is due at now,
// leaving out those scheduled for deletion.
func (s *Service) DueRotations(ctx context.Context, now time.Time) ([]string, error) {
	list, err := s.List(ctx, "", false)
	if err != nil {
		return nil, err
	}
	var due []string
	for _, sec := range list {
		if sec.RotationEnabled && !sec.NextRotation.After(now) {
			due = append(due, sec.Name)
		}
	}
	return due, nil
}

// RetryDelay is how long a scheduled rotation waits after its n-th failure
// in a row: FirstRetryDelay doubled n-1 times, at most MaxRetryDelay and
// at most every.
func RetryDelay(n int, every time.Duration) time.Duration {
	d := FirstRetryDelay
	for i := 1; i < n && d < MaxRetryDelay; i++ {
		d *= 2
	}
	d = min(d, MaxRetryDelay)
	if every > 0 {
		d = min(d, every)
	}
	return d
}

// RecordRotationFailure saves why a scheduled rotation of the secret failed
// (the message must hold no value: the model's errors never do) and
// postpones the next attempt by RetryDelay. It returns the secret as saved.
func (s *Service) RecordRotationFailure(ctx context.Context, ref string, cause error) (*Secret, error) {
	return s.update(ctx, ref, func(_ store.Tx, sec *Secret) error {
		now := s.now().UTC()
		every, _ := ParseSchedule(sec.RotationSchedule)
		sec.RotationFailures++
		sec.LastRotationError, sec.LastRotationErrorTime = cause.Error(), now
		if sec.RotationEnabled {
			sec.NextRotation = now.Add(RetryDelay(sec.RotationFailures, every))
		}
		return nil
	})
}
