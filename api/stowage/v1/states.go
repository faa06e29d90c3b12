package stowagev1

import (
	"fmt"
	"strings"
)

// A state's word is derived from its enum value name, so the proto is the
// one list of states: VOLUME_STATE_IN_USE is "in-use". The CLI prints the
// words, the store records them, and messages use them.

var statePrefixes = []string{"VOLUME_STATE_", "SNAPSHOT_STATE_", "ATTACHMENT_STATE_", "FILE_SYSTEM_STATE_", "ACCESS_POINT_STATE_"}

// StateWord turns the enum value name of any state into its word
// ("SNAPSHOT_STATE_COMPLETED" is "completed"); an unspecified state is "".
func StateWord(name string) string {
	for _, p := range statePrefixes {
		if rest, ok := strings.CutPrefix(name, p); ok {
			if rest == "UNSPECIFIED" {
				return ""
			}
			return strings.ReplaceAll(strings.ToLower(rest), "_", "-")
		}
	}
	return name
}

// parseState reads a state word or enum value name; "" is unspecified.
func parseState[T ~int32](kind, s string, values map[string]int32, names map[int32]string) (T, error) {
	if s == "" {
		return 0, nil
	}
	for v, name := range names {
		if v != 0 && (s == name || s == StateWord(name)) {
			return T(v), nil
		}
	}
	words := make([]string, 0, len(names))
	for v := int32(1); v < int32(len(names)); v++ {
		words = append(words, StateWord(names[v]))
	}
	return 0, fmt.Errorf("%q is not a %s state (one of %s)", s, kind, strings.Join(words, ", "))
}

// Word is the state as users read it: "available", "in-use".
func (s VolumeState) Word() string { return StateWord(s.String()) }

// ParseVolumeState reads a state word ("in-use") or enum value name.
func ParseVolumeState(s string) (VolumeState, error) {
	return parseState[VolumeState]("volume", s, VolumeState_value, VolumeState_name)
}

// MarshalText writes the word, which is what stored records hold.
func (s VolumeState) MarshalText() ([]byte, error) { return []byte(s.Word()), nil }

// UnmarshalText reads a word.
func (s *VolumeState) UnmarshalText(b []byte) (err error) {
	*s, err = ParseVolumeState(string(b))
	return err
}

// Word is the state as users read it: "pending", "completed".
func (s SnapshotState) Word() string { return StateWord(s.String()) }

// ParseSnapshotState reads a state word ("completed") or enum value name.
func ParseSnapshotState(s string) (SnapshotState, error) {
	return parseState[SnapshotState]("snapshot", s, SnapshotState_value, SnapshotState_name)
}

// MarshalText writes the word, which is what stored records hold.
func (s SnapshotState) MarshalText() ([]byte, error) { return []byte(s.Word()), nil }

// UnmarshalText reads a word.
func (s *SnapshotState) UnmarshalText(b []byte) (err error) {
	*s, err = ParseSnapshotState(string(b))
	return err
}

// Word is the state as users read it: "attached".
func (s AttachmentState) Word() string { return StateWord(s.String()) }
