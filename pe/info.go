package pe

import (
	"encoding/json"
	"fmt"
	"time"
)

// SizeUnknown is Info.Size when a PE cannot tell its size.
const SizeUnknown = -1

// Transport says how a PE's data, metadata or combined stream can be reached
// (s3, nbd, ...). The JSON form is the reference's.
type Transport struct {
	Type   string            `json:"transportType"`
	Params map[string]string `json:"params,omitempty"`
}

// ComponentSpec names a component PE and, optionally, the server that holds it.
type ComponentSpec struct {
	ID     ID     `json:"id"`
	Server string `json:"server,omitempty"`
}

// Info is the PE info JSON, compatible with the reference's
// ProtectedEntityInfo, plus size (bytes of data, SizeUnknown if unknown) and
// the creation time of snapshots.
type Info struct {
	ID                 ID              `json:"id"`
	Name               string          `json:"name"`
	Size               int64           `json:"size"`
	DataTransports     []Transport     `json:"dataTransports"`
	MetadataTransports []Transport     `json:"metadataTransports"`
	CombinedTransports []Transport     `json:"combinedTransports"`
	ComponentSpecs     []ComponentSpec `json:"componentSpecs"`
	// Created is set on snapshots: when the point in time was taken.
	Created *time.Time `json:"created,omitempty"`
	// Details are what a type tells of its PEs beyond the above (a
	// PostgreSQL cluster's databases and where it listens); clients that
	// do not know the type can ignore them.
	Details map[string]any `json:"details,omitempty"`
}

// MarshalJSON writes empty lists as [] rather than null, as the reference does.
func (i Info) MarshalJSON() ([]byte, error) {
	type plain Info
	p := plain(i)
	if p.DataTransports == nil {
		p.DataTransports = []Transport{}
	}
	if p.MetadataTransports == nil {
		p.MetadataTransports = []Transport{}
	}
	if p.CombinedTransports == nil {
		p.CombinedTransports = []Transport{}
	}
	if p.ComponentSpecs == nil {
		p.ComponentSpecs = []ComponentSpec{}
	}
	return json.Marshal(p)
}

// UnmarshalJSON reads reference JSON too: a missing size means unknown, not 0.
func (i *Info) UnmarshalJSON(b []byte) error {
	type plain Info
	p := plain{Size: SizeUnknown}
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("PE info: %w", err)
	}
	if p.ID.IsZero() {
		return fmt.Errorf("PE info: missing id")
	}
	if p.Size < SizeUnknown {
		return fmt.Errorf("PE info %s: negative size %d", p.ID, p.Size)
	}
	*i = Info(p)
	return nil
}

// ComponentIDs lists the IDs of the component specs.
func (i Info) ComponentIDs() []ID {
	ids := make([]ID, len(i.ComponentSpecs))
	for n, c := range i.ComponentSpecs {
		ids[n] = c.ID
	}
	return ids
}
