package auth_test

import (
	"testing"

	"github.com/stowage-io/stowage/internal/auth"
)

func doc(t *testing.T, js string) auth.Document {
	t.Helper()
	d, err := auth.ParseDocument([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestEvaluate(t *testing.T) {
	allowDB := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":["db-*","arn:stowage:secretsmanager:*:secret:db-*"]}]}`
	denyProd := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":["secretsmanager:*"],"Resource":"db-prod*"}]}`
	allowAll := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`
	volumes := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["volume:*","snapshot:Describe?napshot"],"Resource":"*"}]}`
	for _, tc := range []struct {
		name     string
		docs     []string
		action   string
		resource []string
		want     auth.Decision
	}{
		{"NoPolicy_DefaultDeny", nil, "secretsmanager:GetSecretValue", []string{"db-pass"}, auth.DefaultDeny},
		{"WildcardResource_Allows", []string{allowDB}, "secretsmanager:GetSecretValue", []string{"db-pass"}, auth.Allowed},
		{"WildcardResource_OtherName_DefaultDeny", []string{allowDB}, "secretsmanager:GetSecretValue", []string{"web-key"}, auth.DefaultDeny},
		{"OtherAction_DefaultDeny", []string{allowDB}, "secretsmanager:PutSecretValue", []string{"db-pass"}, auth.DefaultDeny},
		{"ActionCaseInsensitive", []string{allowDB}, "SecretsManager:getsecretvalue", []string{"db-pass"}, auth.Allowed},
		{"AnyOfTheNames_ARN", []string{allowDB}, "secretsmanager:GetSecretValue", []string{"x", "arn:stowage:secretsmanager:zone-a:secret:db-pass-AbCdEf"}, auth.Allowed},
		{"DenyWinsOverAllow", []string{allowDB, denyProd}, "secretsmanager:GetSecretValue", []string{"db-prod"}, auth.ExplicitDeny},
		{"DenyWinsOverAllowStar", []string{allowAll, denyProd}, "secretsmanager:DeleteSecret", []string{"db-prod-2"}, auth.ExplicitDeny},
		{"DenyElsewhere_AllowStands", []string{allowDB, denyProd}, "secretsmanager:GetSecretValue", []string{"db-dev"}, auth.Allowed},
		{"ActionStar", []string{volumes}, "volume:CreateVolume", []string{"pvc-1"}, auth.Allowed},
		{"ActionQuestionMark", []string{volumes}, "snapshot:DescribeSnapshot", []string{"snap-1"}, auth.Allowed},
		{"ActionQuestionMark_NotTwoChars", []string{volumes}, "snapshot:DescribeSSnapshot", []string{"snap-1"}, auth.DefaultDeny},
		{"ActionPrefixIsNotWildcard", []string{volumes}, "volumes:CreateVolume", []string{"pvc-1"}, auth.DefaultDeny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var docs []auth.Document
			for _, js := range tc.docs {
				docs = append(docs, doc(t, js))
			}
			if got := auth.Evaluate(docs, tc.action, tc.resource...); got != tc.want {
				t.Errorf("Evaluate(%s on %v) = %v, want %v", tc.action, tc.resource, got, tc.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true}, {"*", "anything:at/all", true}, {"db-*", "db-", true}, {"db-*", "db", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"*-prod-*", "db-prod-1", true}, {"*-prod-*", "db-prod", false},
		{"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false}, {"exact", "exact", true}, {"exact", "exactly", false},
	} {
		if got := auth.Match(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestParseDocument_Invalid(t *testing.T) {
	for name, js := range map[string]string{
		"WrongVersion": `{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`,
		"NoStatement":  `{"Version":"2012-10-17","Statement":[]}`,
		"BadEffect":    `{"Version":"2012-10-17","Statement":[{"Effect":"Permit","Action":"*","Resource":"*"}]}`,
		"NoResource":   `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*"}]}`,
		"BareAction":   `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"GetSecretValue","Resource":"*"}]}`,
		"UnknownField": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*","Principal":"x"}]}`,
		"NotJSON":      `Allow everything`,
	} {
		if _, err := auth.ParseDocument([]byte(js)); err == nil {
			t.Errorf("%s: ParseDocument accepted %s", name, js)
		}
	}
}

func TestBuiltinPolicies(t *testing.T) {
	node := auth.Principal{Kind: auth.Component, Name: "stowage:csi-node:node-a"}
	for _, tc := range []struct {
		principal auth.Principal
		action    string
		want      auth.Decision
	}{
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "volume:CreateVolume", auth.Allowed},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "snapshot:DeleteSnapshot", auth.Allowed},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "filesystem:CreateAccessPoint", auth.Allowed},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "secretsmanager:GetSecretValue", auth.ExplicitDeny},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "ssm:GetParameter", auth.ExplicitDeny},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "kms:Decrypt", auth.ExplicitDeny},
		{auth.Principal{Kind: auth.Component, Name: auth.CSIController}, "kms:GetVolumeDataKey", auth.ExplicitDeny},
		{node, "node:RegisterNode", auth.Allowed},
		{node, "volume:DescribeVolume", auth.Allowed},
		{node, "kms:GetVolumeDataKey", auth.Allowed},
		{node, "volume:DeleteVolume", auth.DefaultDeny},
		{node, "secretsmanager:GetSecretValue", auth.DefaultDeny},
		{auth.Principal{Kind: auth.Component, Name: auth.SecretsProvider}, "secretsmanager:BatchGetValues", auth.Allowed},
		{auth.Principal{Kind: auth.Component, Name: auth.SecretsProvider}, "secretsmanager:GetSecretValue", auth.DefaultDeny},
		{auth.Principal{Kind: auth.Component, Name: auth.KMSPlugin}, "kms:Decrypt", auth.Allowed},
		{auth.Principal{Kind: auth.Component, Name: auth.KMSPlugin}, "kms:ScheduleKeyDeletion", auth.DefaultDeny},
		{auth.Principal{Kind: auth.Component, Name: "stowage:other"}, "volume:ListVolumes", auth.DefaultDeny},
	} {
		var docs []auth.Document
		if d, ok := auth.BuiltinPolicy(tc.principal); ok {
			docs = append(docs, d)
		}
		if got := auth.Evaluate(docs, tc.action, "*"); got != tc.want {
			t.Errorf("%s %s = %v, want %v", tc.principal, tc.action, got, tc.want)
		}
	}
}

func TestParsePrincipal(t *testing.T) {
	for name, want := range map[string]auth.Kind{
		"stowage:admin": auth.Admin, "stowage:csi-controller": auth.Component, "stowage:csi-node:node-a": auth.Component,
		"system:serviceaccount:default:web": auth.ServiceAccount, "alice": auth.User,
	} {
		p, err := auth.ParsePrincipal(name)
		if err != nil || p.Kind != want {
			t.Errorf("ParsePrincipal(%q) = %v, %v; want kind %v", name, p, err, want)
		}
	}
	for _, bad := range []string{"", "system:serviceaccount:default", "system:serviceaccount::web", "stowage:", "stowage:csi-node:", "system:node:x", "a*"} {
		if _, err := auth.ParsePrincipal(bad); err == nil {
			t.Errorf("ParsePrincipal(%q) accepted it", bad)
		}
	}
	if n := (auth.Principal{Kind: auth.Component, Name: "stowage:csi-node:node-a"}).Node(); n != "node-a" {
		t.Errorf("Node() = %q", n)
	}
}
