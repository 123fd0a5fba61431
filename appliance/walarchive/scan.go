package walarchive

import (
	"encoding/binary"
	"hash/crc32"
	"time"
)

// The scanner reads the transaction records of a WAL stream for their
// commit and abort timestamps, the times a point-in-time restore stops
// at. It follows PostgreSQL's page layout (access/xlog_internal.h) and
// record layout (access/xlogrecord.h), which have held since 9.5: pages
// of walPageSize with a short header (a long one on a segment's first
// page), records 8-byte aligned in what follows the headers, a record
// split across pages continued after the next page's header. Anything
// it does not understand ends its reading of the segment; a missed
// timestamp only makes a restore fetch more segments.
const (
	walPageSize     = 8192
	pageShortHeader = 24 // MAXALIGN(SizeOfXLogShortPHD)
	pageLongHeader  = 40 // MAXALIGN(SizeOfXLogLongPHD)
	recordHeader    = 24 // SizeOfXLogRecord

	xlpFirstIsContRecord = 0x0001
	xlpLongHeader        = 0x0002

	rmXLOG       = 0
	rmXact       = 1
	xlogSwitch   = 0x40
	xactOpMask   = 0x70
	xactCommit   = 0x00
	xactAbort    = 0x20
	xactCommitPr = 0x30
	xactAbortPr  = 0x40

	blockIDDataShort = 255
	blockIDDataLong  = 254
	blockIDOrigin    = 253
	blockIDTopXid    = 252

	maxRecord = 1 << 30
)

// pgEpoch is where PostgreSQL's timestamps count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// scanner carries a record split across segments from one to the next.
type scanner struct {
	synced bool   // rec is a record's start, or empty at a record boundary
	rec    []byte // the record being gathered
	need   int    // its length, once its first 4 bytes are in
}

// commitSpan is the span of transaction timestamps of the records that
// end in one segment.
type commitSpan struct{ first, last time.Time }

func (s *commitSpan) add(t time.Time) {
	if s.first.IsZero() || t.Before(s.first) {
		s.first = t
	}
	if t.After(s.last) {
		s.last = t
	}
}

// segment scans the bytes of the segment that starts at LSN start, as
// far as they go, for the timestamps of the transaction records that end
// in it.
func (s *scanner) segment(data []byte, start uint64) commitSpan {
	var span commitSpan
	for off := 0; off < len(data); off += walPageSize {
		page := data[off:min(off+walPageSize, len(data))]
		if !s.page(page, start+uint64(off), &span) {
			s.reset()
			break
		}
	}
	return span
}

func (s *scanner) reset() {
	s.synced, s.rec, s.need = false, s.rec[:0], 0
}

// page scans one page; false where the WAL ends or is not understood
// (the rest of the segment is not read).
func (s *scanner) page(p []byte, lsn uint64, span *commitSpan) bool {
	if len(p) < pageShortHeader {
		return false
	}
	info := binary.LittleEndian.Uint16(p[2:])
	if binary.LittleEndian.Uint64(p[8:]) != lsn {
		return false // a recycled or empty page: the WAL ends here
	}
	pos := pageShortHeader
	if info&xlpLongHeader != 0 {
		pos = pageLongHeader
	}
	if pos > len(p) {
		return false
	}
	remLen := int(binary.LittleEndian.Uint32(p[16:]))
	if info&xlpFirstIsContRecord != 0 {
		if !s.synced || len(s.rec) == 0 || s.need-len(s.rec) != remLen {
			// The continuation of a record begun before what was read:
			// skip it.
			s.synced, s.rec, s.need = false, s.rec[:0], 0
			if remLen >= len(p)-pos {
				return true // the whole page continues it
			}
			pos = align8(pos + remLen)
			s.synced = true
		}
	} else {
		if len(s.rec) > 0 {
			return false // a record left unfinished
		}
		s.synced = true
	}
	for pos < len(p) {
		target := recordHeader
		if s.need > 0 {
			target = s.need
		}
		n := min(target-len(s.rec), len(p)-pos)
		s.rec = append(s.rec, p[pos:pos+n]...)
		pos += n
		if s.need == 0 && len(s.rec) >= 4 {
			s.need = int(binary.LittleEndian.Uint32(s.rec))
			if s.need == 0 {
				return false // zeros: the end of the WAL written
			}
			if s.need < recordHeader || s.need > maxRecord {
				return false
			}
		}
		if s.need == 0 || len(s.rec) < s.need {
			continue
		}
		rec := s.rec
		s.rec, s.need = s.rec[:0], 0
		if !validRecord(rec) {
			return false
		}
		rmid, rinfo := rec[17], rec[16]
		if rmid == rmXLOG && rinfo&0xF0 == xlogSwitch {
			// The rest of the segment is padding; the next segment
			// starts with a record.
			s.synced = false
			return false
		}
		if t, ok := transactionTime(rec); ok {
			span.add(t)
		}
		pos = align8(pos)
	}
	return true
}

func align8(n int) int { return (n + 7) &^ 7 }

// validRecord checks a record's CRC (of its data, then of its header up
// to the CRC field).
func validRecord(rec []byte) bool {
	crc := crc32.Update(0, crc32c, rec[recordHeader:])
	crc = crc32.Update(crc, crc32c, rec[:20])
	return crc == binary.LittleEndian.Uint32(rec[20:])
}

// transactionTime returns the timestamp of a commit or abort record: the
// first field of its main data, which ends the record.
func transactionTime(rec []byte) (time.Time, bool) {
	if rec[17] != rmXact {
		return time.Time{}, false
	}
	switch rec[16] & xactOpMask {
	case xactCommit, xactAbort, xactCommitPr, xactAbortPr:
	default:
		return time.Time{}, false
	}
	mainLen := -1
	for pos := recordHeader; pos < len(rec) && mainLen < 0; {
		switch id := rec[pos]; {
		case id == blockIDDataShort && pos+2 <= len(rec):
			mainLen = int(rec[pos+1])
		case id == blockIDDataLong && pos+5 <= len(rec):
			mainLen = int(binary.LittleEndian.Uint32(rec[pos+1:]))
		case id == blockIDOrigin:
			pos += 3
		case id == blockIDTopXid:
			pos += 5
		default:
			// Block references: transaction records have none.
			return time.Time{}, false
		}
	}
	if mainLen < 8 || mainLen > len(rec)-recordHeader {
		return time.Time{}, false
	}
	us := int64(binary.LittleEndian.Uint64(rec[len(rec)-mainLen:]))
	return pgEpoch.Add(time.Duration(us) * time.Microsecond), true
}
