package pe

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		in      string
		typ     string
		name    string
		snap    string
		wantErr string // substring of the error, "" = valid
	}{
		{in: "fs:home", typ: "fs", name: "home"},
		{in: "disk:vm1.img", typ: "disk", name: "vm1.img"},
		{in: "ivd:e1c3cb20-db88-4c1c-9f02-5f5347e435d5:67469e1c-50a8-4f63-9a6a-ad8a2265197c",
			typ: "ivd", name: "e1c3cb20-db88-4c1c-9f02-5f5347e435d5", snap: "67469e1c-50a8-4f63-9a6a-ad8a2265197c"},
		{in: "pvc:ns/claim_1", typ: "pvc", name: "ns/claim_1"},
		{in: "k8s2:a.b-c_d/e:s.1", typ: "k8s2", name: "a.b-c_d/e", snap: "s.1"},
		{in: "", wantErr: "want <type>:<id>"},
		{in: "fs", wantErr: "want <type>:<id>"},
		{in: ":home", wantErr: "empty type"},
		{in: "fs:", wantErr: "empty id"},
		{in: "fs:home:", wantErr: "empty snapshot"},
		{in: "fs:a:b:c", wantErr: "too many"},
		{in: "f-s:home", wantErr: `character '-' not allowed`},
		{in: "fs:ho me", wantErr: `character ' ' not allowed`},
		{in: "fs:home:sn@p", wantErr: `character '@' not allowed`},
		{in: "fs:h\u00e9me", wantErr: "not allowed"},
		{in: "fs:" + strings.Repeat("a", 2000), wantErr: "longer than"},
	}
	for _, tt := range tests {
		id, err := ParseID(tt.in)
		if tt.wantErr != "" {
			if err == nil {
				t.Errorf("ParseID(%q) = %v, want error containing %q", tt.in, id, tt.wantErr)
				continue
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseID(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if len(tt.in) < 100 && !strings.Contains(err.Error(), tt.in) {
				t.Errorf("ParseID(%q) error %q does not name the bad ID", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseID(%q): %v", tt.in, err)
			continue
		}
		if id.Type() != tt.typ || id.Name() != tt.name || id.Snapshot() != tt.snap {
			t.Errorf("ParseID(%q) = (%q, %q, %q), want (%q, %q, %q)", tt.in,
				id.Type(), id.Name(), id.Snapshot(), tt.typ, tt.name, tt.snap)
		}
		if id.String() != tt.in {
			t.Errorf("ParseID(%q).String() = %q", tt.in, id.String())
		}
		if id.HasSnapshot() != (tt.snap != "") {
			t.Errorf("ParseID(%q).HasSnapshot() = %v", tt.in, id.HasSnapshot())
		}
	}
}

func TestIDHelpers(t *testing.T) {
	id, err := NewID("disk", "a.img")
	if err != nil {
		t.Fatal(err)
	}
	s := id.WithSnapshot("s1")
	if s.String() != "disk:a.img:s1" || s.Base() != id {
		t.Errorf("WithSnapshot/Base: %v %v", s, s.Base())
	}
	if _, err := NewID("disk", "a:b"); err == nil {
		t.Error("NewID accepted ':' in the id part")
	}
}

func TestInfoJSON(t *testing.T) {
	id, _ := ParseID("fs:home:s1")
	comp, _ := ParseID("disk:d1:s1")
	for _, size := range []int64{SizeUnknown, 0, 1 << 40} {
		in := Info{ID: id, Name: "home", Size: size,
			DataTransports: []Transport{{Type: "s3", Params: map[string]string{"url": "http://127.0.0.1/fs/fs:home:s1"}}},
			ComponentSpecs: []ComponentSpec{{ID: comp}}}
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out Info
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("unmarshal %s: %v", b, err)
		}
		if out.Size != size || out.ID != id || out.Name != "home" || len(out.ComponentSpecs) != 1 ||
			out.ComponentSpecs[0].ID != comp || out.DataTransports[0].Params["url"] == "" {
			t.Errorf("round trip of %s gave %+v", b, out)
		}
		for _, key := range []string{`"id":"fs:home:s1"`, `"metadataTransports":[]`, `"combinedTransports":[]`, `"transportType":"s3"`} {
			if !strings.Contains(string(b), key) {
				t.Errorf("JSON %s lacks %s", b, key)
			}
		}
	}
	// The reference's JSON has no size: that means unknown, not empty.
	var ref Info
	if err := json.Unmarshal([]byte(`{"id":"ivd:x","name":"x","componentSpecs":[{"id":"ivd:y","server":""}]}`), &ref); err != nil {
		t.Fatal(err)
	}
	if ref.Size != SizeUnknown {
		t.Errorf("size without field = %d, want %d", ref.Size, SizeUnknown)
	}
	for _, bad := range []string{`{"name":"x"}`, `{"id":"bad id"}`, `{"id":"fs:x","size":-7}`, `[`} {
		if err := json.Unmarshal([]byte(bad), &ref); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
}

func TestParseCopyMode(t *testing.T) {
	for _, m := range []CopyMode{Create, CreateNew, Update} {
		got, err := ParseCopyMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseCopyMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseCopyMode("overwrite"); err == nil || !strings.Contains(err.Error(), "overwrite") {
		t.Errorf("ParseCopyMode(overwrite) error = %v", err)
	}
}

func TestMergeExtents(t *testing.T) {
	got := MergeExtents([]Extent{{0, 10, ExtentData}, {10, 5, ExtentData}, {15, 0, ExtentHole}, {15, 5, ExtentHole}, {20, 1, ExtentData}})
	want := []Extent{{0, 15, ExtentData}, {15, 5, ExtentHole}, {20, 1, ExtentData}}
	if len(got) != len(want) {
		t.Fatalf("MergeExtents = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("MergeExtents = %v, want %v", got, want)
		}
	}
}
