package stowagev1

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestFileStates_StoredAsWords_RoundTrip(t *testing.T) {
	for _, s := range []FileSystemState{FileSystemState_FILE_SYSTEM_STATE_CREATING, FileSystemState_FILE_SYSTEM_STATE_AVAILABLE,
		FileSystemState_FILE_SYSTEM_STATE_DELETING, FileSystemState_FILE_SYSTEM_STATE_ERROR} {
		b, err := json.Marshal(s)
		if err != nil || strings.Contains(string(b), "STATE") {
			t.Fatalf("marshal %v = %s, %v; want a word", s, b, err)
		}
		var back FileSystemState
		if err := json.Unmarshal(b, &back); err != nil || back != s {
			t.Errorf("round trip of %v gave %v, %v", s, back, err)
		}
	}
	var a AccessPointState
	if err := json.Unmarshal([]byte(`"available"`), &a); err != nil || a != AccessPointState_ACCESS_POINT_STATE_AVAILABLE {
		t.Errorf("access point state from word: %v, %v", a, err)
	}
	if err := json.Unmarshal([]byte(`"gone"`), &a); err == nil || !strings.Contains(err.Error(), "creating, available, deleting, error") {
		t.Errorf("unknown word: %v", err)
	}
}
