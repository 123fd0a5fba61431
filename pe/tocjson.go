package pe

import (
	"encoding/json"
	"sort"
	"strings"
	"unicode/utf8"
)

// Names and xattr values in a Linux tree are bytes, not text: a file name
// may be in Latin-1 and security.capability or a POSIX ACL is binary.
// encoding/json replaces invalid UTF-8 with U+FFFD, so a TOC stored as
// JSON (a repository snapshot's) would show other names and corrupt xattrs.
// Such strings also go, exact, into base64 fields beside the text ones; the
// text fields keep the lossy form (invalid bytes as U+FFFD), so a reader
// that does not know the base64 fields still sees a name where there is one.

// tocEntryFields is TOCEntry without its JSON methods.
type tocEntryFields TOCEntry

type tocEntryJSON struct {
	tocEntryFields
	NameBytes     []byte      `json:"nameBase64,omitempty"`
	LinknameBytes []byte      `json:"linknameBase64,omitempty"`
	XattrBytes    []xattrJSON `json:"xattrsBase64,omitempty"`
}

// xattrJSON is one xattr whose name or value is not UTF-8; a list, not a
// map, as such a name cannot be an exact JSON object key.
type xattrJSON struct {
	Name  []byte `json:"name"`
	Value []byte `json:"value"`
}

// MarshalJSON keeps strings that are not valid UTF-8 exact.
func (e TOCEntry) MarshalJSON() ([]byte, error) {
	j := tocEntryJSON{tocEntryFields: tocEntryFields(e)}
	if !utf8.ValidString(e.Name) {
		j.Name, j.NameBytes = strings.ToValidUTF8(e.Name, "\uFFFD"), []byte(e.Name)
	}
	if !utf8.ValidString(e.Linkname) {
		j.Linkname, j.LinknameBytes = strings.ToValidUTF8(e.Linkname, "\uFFFD"), []byte(e.Linkname)
	}
	for k, v := range e.Xattrs {
		if utf8.ValidString(k) && utf8.ValidString(v) {
			continue
		}
		if j.XattrBytes == nil {
			// Copy before deleting: the map belongs to e's owner.
			text := make(map[string]string, len(e.Xattrs))
			for k, v := range e.Xattrs {
				text[k] = v
			}
			j.Xattrs = text
		}
		delete(j.Xattrs, k)
		j.XattrBytes = append(j.XattrBytes, xattrJSON{Name: []byte(k), Value: []byte(v)})
	}
	// Map order is random; the JSON of one entry should not be.
	sort.Slice(j.XattrBytes, func(a, b int) bool { return string(j.XattrBytes[a].Name) < string(j.XattrBytes[b].Name) })
	if len(j.Xattrs) == 0 {
		j.Xattrs = nil
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads both the text and the base64 forms.
func (e *TOCEntry) UnmarshalJSON(b []byte) error {
	var j tocEntryJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*e = TOCEntry(j.tocEntryFields)
	if j.NameBytes != nil {
		e.Name = string(j.NameBytes)
	}
	if j.LinknameBytes != nil {
		e.Linkname = string(j.LinknameBytes)
	}
	for _, x := range j.XattrBytes {
		if e.Xattrs == nil {
			e.Xattrs = map[string]string{}
		}
		e.Xattrs[string(x.Name)] = string(x.Value)
	}
	return nil
}
