package provider

import (
	"errors"
	"os"
	"strings"
	"testing"
)

const arnSM = "arn:aws:secretsmanager:us-west-2:111122223333:secret:MySecret-AbC123"

func TestParseObjects_Errors(t *testing.T) {
	for _, tc := range []struct {
		name, objects, translate, want string
	}{
		{"not YAML", `- objectName: [`, "", "Failed to load SecretProviderClass: "},
		{"not a list", `objectName: a`, "", "Failed to load SecretProviderClass: "},
		{"empty list", `[]`, "", "list nothing to mount"},
		{"empty entry", "- objectName: a\n  objectType: secretsmanager\n-\n", "", "Empty descriptor entry in SecretProviderClass"},
		{"bad pathTranslation", `[{objectName: a, objectType: secretsmanager}]`, "ab", "pathTranslation must be either 'False' or a single character string"},
		{"no name", `[{objectType: secretsmanager}]`, "", "Object name must be specified"},
		{"bad ARN", `[{objectName: "arn:aws:secretsmanager"}]`, "", "Invalid ARN format in object name: arn:aws:secretsmanager"},
		{"no type and no ARN", `[{objectName: MySecret}]`, "", "Must use objectType when a full ARN is not specified: MySecret"},
		{"ARN of another service", `[{objectName: "arn:aws:s3:us-west-2:1:bucket/x"}]`, "", "Invalid service in ARN: s3"},
		{"unknown objectType", `[{objectName: a, objectType: vault}]`, "", "Invalid objectType: vault"},
		{"objectType ssm is refused", `[{objectName: a, objectType: ssm}]`, "", "Invalid objectType: ssm"},
		{"objectType against the ARN", `[{objectName: "` + arnSM + `", objectType: ssmparameter}]`, "", "objectType does not match ARN: " + arnSM},
		{"ssm version and label", `[{objectName: p, objectType: ssmparameter, objectVersion: "1", objectVersionLabel: l}]`, "", "ssm parameters can not specify both objectVersion and objectVersionLabel: p"},
		{"../ in the alias", `[{objectName: a, objectType: secretsmanager, objectAlias: ../x}]`, "False", "path can not contain ../: a"},
		{"../ in the name without translation", `[{objectName: /x/../../etc, objectType: secretsmanager}]`, "False", "path can not contain ../: /x/../../etc"},
		{"trailing /.. without translation", `[{objectName: x/.., objectType: secretsmanager}]`, "false", "path can not contain ../: x/.."},
		{"bad filePermission", `[{objectName: a, objectType: secretsmanager, filePermission: "644"}]`, "", "Invalid File Permission: 644"},
		{"bad filePermission digits", `[{objectName: a, objectType: secretsmanager, filePermission: "0800"}]`, "", "Invalid File Permission: 0800"},
		{"jmesPath without path", `[{objectName: a, objectType: secretsmanager, jmesPath: [{objectAlias: u}]}]`, "", "Path must be specified for JMES object"},
		{"jmesPath without alias", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: u}]}]`, "", "Object alias must be specified for JMES object"},
		{"jmesPath bad filePermission", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: u, objectAlias: u, filePermission: "77"}]}]`, "", "Invalid File Permission: 77"},
		{"../ in a jmesPath alias (the AWS provider misses it)", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: u, objectAlias: "x/../../y"}]}]`, "False", "path can not contain ../: x/../../y"},
		{"../ at the start of a jmesPath alias", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: u, objectAlias: "../y"}]}]`, "False", "path can not contain ../: ../y"},
		{"failover without alias", `[{objectName: a, objectType: secretsmanager, failoverObject: {objectName: b}}]`, "", "object alias must be specified for objects with failover entries: a"},
		{"failover versions differ", `[{objectName: a, objectType: secretsmanager, objectAlias: x, objectVersion: "1", failoverObject: {objectName: b}}]`, "", "object versions must match between primary and failover regions: a"},
		{"failover ssm version and label", `[{objectName: a, objectType: ssmparameter, objectAlias: x, failoverObject: {objectName: b, objectVersion: "1", objectVersionLabel: l}}]`, "", "ssm parameters can not specify both objectVersion and objectVersionLabel: a"},
		{"duplicate name, no alias, no label", `[{objectName: a, objectType: secretsmanager}, {objectName: a, objectType: secretsmanager}]`, "",
			"found descriptor with duplicate object name a, no object alias, and no version label"},
		{"duplicate name and alias, no label", `[{objectName: a, objectType: secretsmanager, objectAlias: x}, {objectName: a, objectType: secretsmanager, objectAlias: x}]`, "",
			"found descriptor with duplicate object name a, duplicate object alias x, and no version label"},
		{"duplicate name and label, no alias", `[{objectName: a, objectType: secretsmanager, objectVersionLabel: L}, {objectName: a, objectType: secretsmanager, objectVersionLabel: L}]`, "",
			"found descriptor with duplicate object name a, no object alias, and duplicate version label L"},
		{"duplicate name, alias and label", `[{objectName: a, objectType: secretsmanager, objectAlias: x, objectVersionLabel: L}, {objectName: a, objectType: secretsmanager, objectAlias: x, objectVersionLabel: L}]`, "",
			"found descriptor with duplicate object name a, duplicate object alias x, and duplicate version label L"},
		{"duplicate alias across names", `[{objectName: a, objectType: secretsmanager, objectAlias: x}, {objectName: b, objectType: secretsmanager, objectAlias: x}]`, "",
			"found duplicate object alias x"},
		{"jmesPath alias used by an object", `[{objectName: a, objectType: secretsmanager, objectAlias: x}, {objectName: b, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: x}]}]`, "",
			"Name already in use for objectAlias: found duplicate object alias x in JMES path entry p"},
		{"two jmesPath entries with one alias", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: u}, {path: q, objectAlias: u}]}]`, "",
			"Name already in use for objectAlias: found duplicate object alias u in JMES path entry q"},
		{"absolute alias that climbs, translation off", `[{objectName: a, objectType: secretsmanager, objectAlias: /../etc}]`, "False", "path can not contain ../: a"},
		{"absolute jmesPath alias that climbs, translation off", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: /../etc}]}]`, "False",
			"path can not contain ../: /../etc (jmesPath objectAlias of a)"},
		{"trailing /.. in a jmesPath alias", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: x/..}]}]`, "False", "path can not contain ../: x/.. (jmesPath objectAlias of a)"},
		// Ours: checks of the final file names.
		{"same file after translation", `[{objectName: a/b, objectType: secretsmanager}, {objectName: a_b, objectType: secretsmanager}]`, "",
			"object a/b and object a_b would both write file a_b"},
		{"alias equal to another object's name", `[{objectName: a, objectType: secretsmanager}, {objectName: b, objectType: secretsmanager, objectAlias: a}]`, "",
			"would both write file a"},
		{"one name, two labels, no alias: one file", `[{objectName: a, objectType: secretsmanager, objectVersionLabel: AWSCURRENT}, {objectName: a, objectType: secretsmanager, objectVersionLabel: AWSPREVIOUS}]`, "",
			"would both write file a"},
		{"file name .. alone", `[{objectName: "..", objectType: secretsmanager}]`, "", `file name ".." of object .. is not a plain relative path`},
		{"alias .. alone", `[{objectName: a, objectType: secretsmanager, objectAlias: ".."}]`, "", `file name ".." of object a is not a plain relative path`},
		{"alias / alone, translation off: no file name", `[{objectName: a, objectType: secretsmanager, objectAlias: /}]`, "False", `file name "" of object a is not a plain relative path`},
		{"alias with a trailing /", `[{objectName: a, objectType: secretsmanager, objectAlias: x/}]`, "False", `file name "x/" of object a is not a plain relative path`},
		{"alias with ./ in it", `[{objectName: a, objectType: secretsmanager, objectAlias: x/./y}]`, "False", `file name "x/./y" of object a is not a plain relative path`},
		{"jmesPath alias / alone, translation off", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: /}]}]`, "False", `file name "" of jmesPath p of object a`},
		{"jmesPath alias equal to its object's file", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: a}]}]`, "",
			"object a and jmesPath p of object a would both write file a"},
		{"jmesPath alias .. alone", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: ".."}]}]`, "", `file name ".." of jmesPath p of object a`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseObjects(tc.objects, tc.translate)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseObjects = %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseObjects_Accepted(t *testing.T) {
	const seedSPC = `
- objectName: "arn:aws:secretsmanager:us-west-2:111122223333:secret:MySecret-AbC123"
- objectName: "MySecret2"
  objectType: "secretsmanager"
- objectName: "MySecret3"
  objectType: "secretsmanager"
  objectVersionLabel: "AWSCURRENT"
`
	for _, tc := range []struct {
		name, objects, translate string
		check                    func(t *testing.T, o *Objects)
	}{
		{"the seed's three objects: full ARN, name, label", seedSPC, "", func(t *testing.T, o *Objects) {
			if len(o.Objects) != 3 || o.Objects[0].Type != TypeSecretsManager || o.Objects[2].VersionLabel != "AWSCURRENT" {
				t.Fatalf("%+v", o.Objects)
			}
			if f := o.Objects[0].FileName; f != "arn:aws:secretsmanager:us-west-2:111122223333:secret:MySecret-AbC123" {
				t.Fatalf("file of the ARN object: %s", f)
			}
		}},
		{"type inferred from an ssm ARN", `[{objectName: "arn:aws:ssm:us-east-1:1:parameter/app/x", objectAlias: x}]`, "", func(t *testing.T, o *Objects) {
			if o.Objects[0].Type != TypeSSMParameter {
				t.Fatalf("type %s", o.Objects[0].Type)
			}
		}},
		{"default translation turns / into _", `[{objectName: /app/db/pw, objectType: ssmparameter}]`, "", func(t *testing.T, o *Objects) {
			if o.Objects[0].FileName != "_app_db_pw" {
				t.Fatalf("file %s", o.Objects[0].FileName)
			}
		}},
		{"translation off keeps dirs, drops the leading /", `[{objectName: /app/db/pw, objectType: ssmparameter}]`, "False", func(t *testing.T, o *Objects) {
			if o.Objects[0].FileName != "app/db/pw" {
				t.Fatalf("file %s", o.Objects[0].FileName)
			}
		}},
		{"other translation character", `[{objectName: a/b, objectType: secretsmanager}]`, "-", func(t *testing.T, o *Objects) {
			if o.Objects[0].FileName != "a-b" {
				t.Fatalf("file %s", o.Objects[0].FileName)
			}
		}},
		{"same name with different aliases", `[{objectName: a, objectType: secretsmanager, objectAlias: cur}, {objectName: a, objectType: secretsmanager, objectAlias: prev, objectVersionLabel: AWSPREVIOUS}]`, "", func(t *testing.T, o *Objects) {
			if len(o.Objects) != 2 {
				t.Fatal(o.Objects)
			}
		}},
		{"file permissions, inherited by jmesPath unless set", `[{objectName: db, objectType: secretsmanager, filePermission: "0600", jmesPath: [{path: username, objectAlias: user}, {path: '"hyphen-key"', objectAlias: h, filePermission: "0644"}]}]`, "", func(t *testing.T, o *Objects) {
			ob := o.Objects[0]
			if ob.Mode != 0o600 || ob.JMESPath[0].Mode != 0o600 || ob.JMESPath[1].Mode != os.FileMode(0o644) || ob.JMESPath[1].Path != `"hyphen-key"` {
				t.Fatalf("%+v", ob)
			}
		}},
		{"optional, ours", `[{objectName: maybe, objectType: secretsmanager, optional: true}]`, "", func(t *testing.T, o *Objects) {
			if !o.Objects[0].Optional {
				t.Fatal("optional not read")
			}
		}},
		{"unknown keys and region keys are ignored", `[{objectName: a, objectType: secretsmanager, region: eu-west-1, somethingElse: 1}]`, "", func(t *testing.T, o *Objects) {
			if len(o.Objects) != 1 {
				t.Fatal(o.Objects)
			}
		}},
		{"failover accepted with a note", `[{objectName: a, objectType: secretsmanager, objectAlias: x, failoverObject: {objectName: b}}]`, "", func(t *testing.T, o *Objects) {
			if len(o.Notes) != 1 || !strings.Contains(o.Notes[0], "one region") {
				t.Fatalf("notes %v", o.Notes)
			}
		}},
		// An absolute alias stays inside the mount, as with the AWS
		// provider: translation turns its / into _, or (off) the leading
		// / is dropped.
		{"absolute alias, default translation", `[{objectName: a, objectType: secretsmanager, objectAlias: /etc/passwd}]`, "", func(t *testing.T, o *Objects) {
			if f := o.Objects[0].FileName; f != "_etc_passwd" {
				t.Fatalf("file %s", f)
			}
		}},
		{"absolute alias, translation off: made relative", `[{objectName: a, objectType: secretsmanager, objectAlias: /etc/passwd}]`, "False", func(t *testing.T, o *Objects) {
			if f := o.Objects[0].FileName; f != "etc/passwd" {
				t.Fatalf("file %s", f)
			}
		}},
		{"absolute jmesPath alias, translation off: made relative", `[{objectName: a, objectType: secretsmanager, jmesPath: [{path: p, objectAlias: /etc/passwd}]}]`, "False", func(t *testing.T, o *Objects) {
			if f := o.Objects[0].JMESPath[0].FileName; f != "etc/passwd" {
				t.Fatalf("file %s", f)
			}
		}},
		{"secretsmanager may pin objectVersion and objectVersionLabel (only ssm may not)", `[{objectName: a, objectType: secretsmanager, objectVersion: v1, objectVersionLabel: L}]`, "", func(t *testing.T, o *Objects) {
			if o.Objects[0].Version != "v1" || o.Objects[0].VersionLabel != "L" {
				t.Fatalf("%+v", o.Objects[0])
			}
		}},
		{"an ARN of any region (one server is one region)", `[{objectName: "arn:aws:secretsmanager:eu-north-1:1:secret:x-AbC123"}]`, "", func(t *testing.T, o *Objects) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseObjects(tc.objects, tc.translate)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

func TestExtract(t *testing.T) {
	value := []byte(`{"username":"admin","password":"p@ss","port":5432,"nested":{"k":"v"},"hyphen-key":"h"}`)
	for _, tc := range []struct {
		name, value, path, want, wantErr string
	}{
		{"top-level key", string(value), "username", "admin", ""},
		{"nested key", string(value), "nested.k", "v", ""},
		{"quoted hyphenated key", string(value), `"hyphen-key"`, "h", ""},
		{"a number is refused", string(value), "port", "", "Invalid JMES search result type for path:port. Only string is allowed."},
		{"an object is refused", string(value), "nested", "", "Invalid JMES search result type for path:nested. Only string is allowed."},
		{"missing key", string(value), "nope", "", "JMES Path - nope for object alias - al does not point to a valid object."},
		{"bad path", string(value), "[[", "", "Invalid JMES Path: [[."},
		{"not JSON", "hunter2", "a", "", "Invalid JSON used with jmesPath in secret: db."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Extract("db", []byte(tc.value), tc.path, "al")
			if tc.wantErr == "" && (err != nil || got != tc.want) || tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr) {
				t.Fatalf("Extract = %q, %v; want %q, %q", got, err, tc.want, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") || err != nil && strings.Contains(err.Error(), "p@ss") {
				t.Fatal("the error shows the value")
			}
		})
	}
}
