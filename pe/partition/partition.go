// Package partition reads the partition table of a disk image: GPT, or
// MBR with its extended (logical) partitions. It reads only the tables, so
// it works on any io.ReaderAt (a snapshot, a repository-backed image).
package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// Partition is one partition of a disk.
type Partition struct {
	// Number is the partition's number as Linux names it: p1, p2, ...
	// (logical MBR partitions start at 5).
	Number int
	Start  int64 // byte offset on the disk
	Size   int64 // bytes
	// Type is the MBR type byte ("0x83") or the GPT type GUID.
	Type string
	Name string // GPT partition name, if any
}

// Table is a disk's partition table.
type Table struct {
	Scheme     string // "gpt" or "mbr"
	Partitions []Partition
}

// ErrNoTable is returned for a disk without a partition table.
var ErrNoTable = errors.New("no partition table")

const (
	sector          = 512
	maxGPTEntries   = 1024
	maxLogicalParts = 128
)

// Read reads the partition table of a disk of the given size. A protective
// MBR leads to the GPT; partitions reaching past the disk are an error.
func Read(r io.ReaderAt, size int64) (Table, error) {
	mbr := make([]byte, sector)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return Table{}, fmt.Errorf("read MBR: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return Table{}, ErrNoTable
	}
	entries := mbrEntries(mbr)
	for _, e := range entries {
		if e.typ == 0xEE {
			return readGPT(r, size)
		}
	}
	t := Table{Scheme: "mbr"}
	for i, e := range entries {
		if e.typ == 0 || e.sectors == 0 {
			continue
		}
		start, n := int64(e.lba)*sector, int64(e.sectors)*sector
		if e.typ == 0x05 || e.typ == 0x0F || e.typ == 0x85 {
			logical, err := readLogical(r, size, start)
			if err != nil {
				return Table{}, err
			}
			t.Partitions = append(t.Partitions, logical...)
			continue
		}
		if start+n > size {
			return Table{}, fmt.Errorf("MBR partition %d ends at %d, past the disk's %d bytes", i+1, start+n, size)
		}
		t.Partitions = append(t.Partitions, Partition{Number: i + 1, Start: start, Size: n, Type: fmt.Sprintf("0x%02x", e.typ)})
	}
	if len(t.Partitions) == 0 {
		return Table{}, ErrNoTable
	}
	sortByNumber(t.Partitions)
	return t, nil
}

type mbrEntry struct {
	typ     byte
	lba     uint32
	sectors uint32
}

func mbrEntries(b []byte) [4]mbrEntry {
	var out [4]mbrEntry
	for i := range out {
		e := b[446+16*i:]
		out[i] = mbrEntry{typ: e[4], lba: binary.LittleEndian.Uint32(e[8:]), sectors: binary.LittleEndian.Uint32(e[12:])}
	}
	return out
}

// readLogical follows the chain of EBRs of an extended partition.
func readLogical(r io.ReaderAt, size, extStart int64) ([]Partition, error) {
	var out []Partition
	ebr := make([]byte, sector)
	next := extStart
	for n := 5; n < 5+maxLogicalParts; n++ {
		if _, err := r.ReadAt(ebr, next); err != nil {
			return nil, fmt.Errorf("read EBR at %d: %w", next, err)
		}
		if ebr[510] != 0x55 || ebr[511] != 0xAA {
			return nil, fmt.Errorf("EBR at %d: bad signature", next)
		}
		es := mbrEntries(ebr)
		if es[0].sectors != 0 {
			start := next + int64(es[0].lba)*sector
			length := int64(es[0].sectors) * sector
			if start+length > size {
				return nil, fmt.Errorf("logical partition %d ends past the disk", n)
			}
			out = append(out, Partition{Number: n, Start: start, Size: length, Type: fmt.Sprintf("0x%02x", es[0].typ)})
		}
		if es[1].sectors == 0 {
			return out, nil
		}
		next = extStart + int64(es[1].lba)*sector
	}
	return nil, fmt.Errorf("more than %d logical partitions", maxLogicalParts)
}

// readGPT reads the primary GPT header and entries, checking their CRCs.
func readGPT(r io.ReaderAt, size int64) (Table, error) {
	h := make([]byte, sector)
	if _, err := r.ReadAt(h, sector); err != nil {
		return Table{}, fmt.Errorf("read GPT header: %w", err)
	}
	if !bytes.Equal(h[:8], []byte("EFI PART")) {
		return Table{}, errors.New("protective MBR but no GPT header")
	}
	hsize := binary.LittleEndian.Uint32(h[12:])
	if hsize < 92 || hsize > sector {
		return Table{}, fmt.Errorf("GPT header size %d", hsize)
	}
	crc := binary.LittleEndian.Uint32(h[16:])
	hc := append([]byte(nil), h[:hsize]...)
	binary.LittleEndian.PutUint32(hc[16:], 0)
	if crc32.ChecksumIEEE(hc) != crc {
		return Table{}, errors.New("GPT header checksum mismatch")
	}
	entriesLBA := int64(binary.LittleEndian.Uint64(h[72:]))
	count := binary.LittleEndian.Uint32(h[80:])
	esize := binary.LittleEndian.Uint32(h[84:])
	if count > maxGPTEntries || esize < 128 || esize > 4096 {
		return Table{}, fmt.Errorf("GPT with %d entries of %d bytes", count, esize)
	}
	entries := make([]byte, int(count)*int(esize))
	if _, err := r.ReadAt(entries, entriesLBA*sector); err != nil {
		return Table{}, fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h[88:]) {
		return Table{}, errors.New("GPT entries checksum mismatch")
	}
	t := Table{Scheme: "gpt"}
	for i := range int(count) {
		e := entries[i*int(esize):]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := int64(binary.LittleEndian.Uint64(e[32:])), int64(binary.LittleEndian.Uint64(e[40:]))
		if last < first || (last+1)*sector > size {
			return Table{}, fmt.Errorf("GPT partition %d: sectors %d-%d do not fit the disk", i+1, first, last)
		}
		t.Partitions = append(t.Partitions, Partition{
			Number: i + 1, Start: first * sector, Size: (last - first + 1) * sector,
			Type: guid(e[:16]), Name: utf16Name(e[56:128]),
		})
	}
	if len(t.Partitions) == 0 {
		return Table{}, ErrNoTable
	}
	return t, nil
}

// guid formats a GPT GUID (mixed-endian) as text.
func guid(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]),
		binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return strings.TrimSpace(string(utf16.Decode(u)))
}

func sortByNumber(ps []Partition) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Number < ps[j-1].Number; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}
