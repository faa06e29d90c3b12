package stowagev1

import (
	"encoding/json"
	"testing"
)

func TestStateWords_RoundTripEveryState(t *testing.T) {
	for v, name := range VolumeState_name {
		s := VolumeState(v)
		got, err := ParseVolumeState(s.Word())
		if err != nil || got != s {
			t.Errorf("%s: word %q parses to %v, %v", name, s.Word(), got, err)
		}
		b, err := json.Marshal(struct{ S VolumeState }{s})
		if err != nil {
			t.Fatal(err)
		}
		var back struct{ S VolumeState }
		if err := json.Unmarshal(b, &back); err != nil || back.S != s {
			t.Errorf("%s: JSON %s reads back as %v, %v", name, b, back.S, err)
		}
	}
	for v, name := range SnapshotState_name {
		s := SnapshotState(v)
		if got, err := ParseSnapshotState(s.Word()); err != nil || got != s {
			t.Errorf("%s: word %q parses to %v, %v", name, s.Word(), got, err)
		}
	}
}

func TestStateWords_AsUsersReadThem(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{VolumeState_VOLUME_STATE_IN_USE.Word(), "in-use"},
		{VolumeState_VOLUME_STATE_AVAILABLE.Word(), "available"},
		{VolumeState_VOLUME_STATE_UNSPECIFIED.Word(), ""},
		{SnapshotState_SNAPSHOT_STATE_COMPLETED.Word(), "completed"},
		{AttachmentState_ATTACHMENT_STATE_ATTACHED.Word(), "attached"},
	} {
		if tt.got != tt.want {
			t.Errorf("word %q, want %q", tt.got, tt.want)
		}
	}
	if _, err := ParseVolumeState("busy"); err == nil {
		t.Error(`"busy" parsed as a volume state`)
	} else if want := `"busy" is not a volume state (one of creating, available, in-use, deleting, error)`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}
