package stowagev1

import (
	"fmt"
	"strings"
)

// File system and access point states have words as volume states do
// (states.go): FILE_SYSTEM_STATE_AVAILABLE is "available".

func fileStateWord(name, prefix string) string {
	rest := strings.TrimPrefix(name, prefix)
	if rest == "UNSPECIFIED" {
		return ""
	}
	return strings.ReplaceAll(strings.ToLower(rest), "_", "-")
}

func parseFileState(kind, prefix, s string, names map[int32]string) (int32, error) {
	if s == "" {
		return 0, nil
	}
	var words []string
	for v := int32(1); v < int32(len(names)); v++ {
		if s == names[v] || s == fileStateWord(names[v], prefix) {
			return v, nil
		}
		words = append(words, fileStateWord(names[v], prefix))
	}
	return 0, fmt.Errorf("%q is not a %s state (one of %s)", s, kind, strings.Join(words, ", "))
}

// Word is the state as users read it: "available".
func (s FileSystemState) Word() string { return fileStateWord(s.String(), "FILE_SYSTEM_STATE_") }

// MarshalText writes the word, which is what stored records hold.
func (s FileSystemState) MarshalText() ([]byte, error) { return []byte(s.Word()), nil }

// UnmarshalText reads a word or an enum value name.
func (s *FileSystemState) UnmarshalText(b []byte) error {
	v, err := parseFileState("file system", "FILE_SYSTEM_STATE_", string(b), FileSystemState_name)
	*s = FileSystemState(v)
	return err
}

// Word is the state as users read it: "available".
func (s AccessPointState) Word() string { return fileStateWord(s.String(), "ACCESS_POINT_STATE_") }

// MarshalText writes the word, which is what stored records hold.
func (s AccessPointState) MarshalText() ([]byte, error) { return []byte(s.Word()), nil }

// UnmarshalText reads a word or an enum value name.
func (s *AccessPointState) UnmarshalText(b []byte) error {
	v, err := parseFileState("access point", "ACCESS_POINT_STATE_", string(b), AccessPointState_name)
	*s = AccessPointState(v)
	return err
}
