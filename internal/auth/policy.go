package auth

import (
	"encoding/json"
	"fmt"
	"strings"
)

// PolicyVersion is the only policy language version, as on AWS.
const PolicyVersion = "2012-10-17"

// Document is an IAM-shaped policy document.
type Document struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement allows or denies actions on resources. Action and Resource
// take a string or a list, as IAM does.
type Statement struct {
	Sid      string  `json:"Sid,omitempty"`
	Effect   string  `json:"Effect"`
	Action   strList `json:"Action"`
	Resource strList `json:"Resource"`
}

type strList []string

func (l *strList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings")
	}
	*l = many
	return nil
}

// ParseDocument decodes and checks a policy document.
func ParseDocument(b []byte) (Document, error) {
	var d Document
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return Document{}, fmt.Errorf("policy document: %v", err)
	}
	return d, d.Validate()
}

// Validate checks the document's version, effects, actions and resources.
func (d Document) Validate() error {
	if d.Version != PolicyVersion {
		return fmt.Errorf("policy document: Version must be %q", PolicyVersion)
	}
	if len(d.Statement) == 0 {
		return fmt.Errorf("policy document: no Statement")
	}
	for i, s := range d.Statement {
		if s.Effect != "Allow" && s.Effect != "Deny" {
			return fmt.Errorf("policy document: statement %d: Effect must be Allow or Deny, not %q", i, s.Effect)
		}
		if len(s.Action) == 0 || len(s.Resource) == 0 {
			return fmt.Errorf("policy document: statement %d: Action and Resource are required", i)
		}
		for _, a := range s.Action {
			if a != "*" && !strings.Contains(a, ":") {
				return fmt.Errorf("policy document: statement %d: action %q is not service:Action (e.g. secretsmanager:GetSecretValue) or *", i, a)
			}
		}
		for _, r := range s.Resource {
			if r == "" {
				return fmt.Errorf("policy document: statement %d: empty resource", i)
			}
		}
	}
	return nil
}

// Decision is the outcome of evaluating policies.
type Decision int

const (
	// DefaultDeny: no statement matched.
	DefaultDeny Decision = iota
	Allowed
	// ExplicitDeny: a Deny statement matched; it wins over any Allow.
	ExplicitDeny
)

// Evaluate decides whether action on any of resources (the names one
// object goes by: id, name, ARN) is allowed by docs. An explicit Deny
// matching any of the names wins; otherwise an Allow matching any name
// allows; otherwise the default is deny.
func Evaluate(docs []Document, action string, resources ...string) Decision {
	allowed := false
	for _, d := range docs {
		for _, s := range d.Statement {
			if !matchAny(s.Action, action, true) {
				continue
			}
			hit := false
			for _, r := range resources {
				if matchAny(s.Resource, r, false) {
					hit = true
					break
				}
			}
			if !hit {
				continue
			}
			if s.Effect == "Deny" {
				return ExplicitDeny
			}
			allowed = true
		}
	}
	if allowed {
		return Allowed
	}
	return DefaultDeny
}

func matchAny(patterns []string, s string, fold bool) bool {
	for _, p := range patterns {
		if fold {
			// Action names are case-insensitive in IAM.
			if Match(strings.ToLower(p), strings.ToLower(s)) {
				return true
			}
		} else if Match(p, s) {
			return true
		}
	}
	return false
}

// Match reports whether s matches pattern, where * matches any run of
// characters (including none and including ':' and '/') and ? exactly one.
func Match(pattern, s string) bool {
	// Iterative wildcard matching with backtracking to the last star.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && (pattern[p] == '?' || pattern[p] == s[i]):
			p++
			i++
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
