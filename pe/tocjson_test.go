package pe

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestTOCEntryJSONKeepsBytes(t *testing.T) {
	// A file capability (binary, with NULs and bytes ≥ 0x80), a Latin-1 name
	// and link target, and an ordinary text xattr.
	capability := "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\xff\x00\x00\x00"
	in := TOCEntry{
		Name:     "etc/caf\xe9",
		Mode:     0o4755,
		ModTime:  time.Unix(1, 2).UTC(),
		Linkname: "/opt/na\xefve",
		Xattrs: map[string]string{"security.capability": capability, "user.note": "plain text",
			"user.\xe9t\xe9": "a", "user.\xe8t\xe8": "b"}, // two names JSON would make one
		Devmajor: 8, Devminor: 70000,
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	// An old reader sees the name, lossy: a directory never becomes "".
	var lossy struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &lossy); err != nil || lossy.Name != "etc/caf\uFFFD" {
		t.Fatalf("text name %q, %v (%s)", lossy.Name, err, b)
	}
	var out TOCEntry
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %#v\nout %#v\njson %s", in, out, b)
	}
	if in.Xattrs["security.capability"] != capability {
		t.Fatal("MarshalJSON changed the caller's xattrs")
	}

	// Valid UTF-8 stays in the reference's plain fields, readable by a
	// reader that does not know the base64 ones.
	plain := TOCEntry{Name: "a/b", Linkname: "c", Xattrs: map[string]string{"user.x": "y"}}
	b, err = json.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "Base64") {
		t.Fatalf("plain entry used base64 fields: %s", b)
	}
	var old struct {
		Name     string            `json:"name"`
		Linkname string            `json:"linkname"`
		Xattrs   map[string]string `json:"xattrs"`
	}
	if err := json.Unmarshal(b, &old); err != nil || old.Name != "a/b" || old.Linkname != "c" || old.Xattrs["user.x"] != "y" {
		t.Fatalf("old reader: %+v %v (%s)", old, err, b)
	}
}
