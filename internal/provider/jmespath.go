package provider

import (
	"encoding/json"
	"fmt"

	"github.com/jmespath/go-jmespath"
)

// search is the one JMESPath function the provider needs. It is
// github.com/jmespath/go-jmespath v0.4.0, what the AWS provider uses, so
// that paths behave the same.
var search = jmespath.Search

// Extract evaluates a jmesPath entry against a secret's JSON value. As in
// the AWS provider, only a string result is allowed. Errors name the
// object, never the value.
func Extract(objectName string, value []byte, path, alias string) (string, error) {
	var data any
	if err := json.Unmarshal(value, &data); err != nil {
		return "", fmt.Errorf("Invalid JSON used with jmesPath in secret: %s.", objectName)
	}
	res, err := search(path, data)
	if err != nil {
		return "", fmt.Errorf("Invalid JMES Path: %s.", path)
	}
	if res == nil {
		return "", fmt.Errorf("JMES Path - %s for object alias - %s does not point to a valid object.", path, alias)
	}
	s, ok := res.(string)
	if !ok {
		return "", fmt.Errorf("Invalid JMES search result type for path:%s. Only string is allowed.", path)
	}
	return s, nil
}
