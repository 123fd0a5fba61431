package disk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// The blocks file of a snapshot holds one 32-byte entry per block of the
// image: the SHA-256 of the block's bytes, or 32 zero bytes (zeroSum) for
// a block that reads as zeros. Comparing two blocks files tells the changed
// blocks without reading either image.
//
//	offset  size  field
//	0       16    magic "ASTROLABEBLOCKS1"
//	16      4     block size, big endian
//	20      4     reserved, 0
//	24      8     image size in bytes, big endian
//	32      32*n  entries, n = ceil(image size / block size)
//
// The last block may be short; its hash is over the bytes it has.
const (
	blockSize    = 64 << 10
	blocksMagic  = "ASTROLABEBLOCKS1"
	blocksHeader = 32
	sumSize      = 32
)

// zeroSum marks all-zero blocks. No SHA-256 is all zeros in practice.
var zeroSum [sumSize]byte

type blocksHeaderInfo struct {
	blockSize int64
	imageSize int64
}

func (h blocksHeaderInfo) blocks() int64 {
	return (h.imageSize + h.blockSize - 1) / h.blockSize
}

func (h blocksHeaderInfo) marshal() []byte {
	b := make([]byte, blocksHeader)
	copy(b, blocksMagic)
	binary.BigEndian.PutUint32(b[16:], uint32(h.blockSize))
	binary.BigEndian.PutUint64(b[24:], uint64(h.imageSize))
	return b
}

func parseBlocksHeader(b []byte) (blocksHeaderInfo, error) {
	if len(b) < blocksHeader || string(b[:len(blocksMagic)]) != blocksMagic {
		return blocksHeaderInfo{}, errors.New("not a blocks file (bad magic)")
	}
	h := blocksHeaderInfo{
		blockSize: int64(binary.BigEndian.Uint32(b[16:])),
		imageSize: int64(binary.BigEndian.Uint64(b[24:])),
	}
	if h.blockSize <= 0 || h.blockSize%512 != 0 || h.imageSize < 0 {
		return blocksHeaderInfo{}, fmt.Errorf("bad header: block size %d, image size %d", h.blockSize, h.imageSize)
	}
	return h, nil
}

// blocksReader reads a blocks file's entries in order.
type blocksReader struct {
	blocksHeaderInfo
	f *os.File
	r *bufio.Reader
}

func openBlocks(path string) (*blocksReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	br := &blocksReader{f: f, r: bufio.NewReaderSize(f, 1<<20)}
	hdr := make([]byte, blocksHeader)
	if _, err := io.ReadFull(br.r, hdr); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	if br.blocksHeaderInfo, err = parseBlocksHeader(hdr); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if want := blocksHeader + sumSize*br.blocks(); fi.Size() != want {
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes, want %d for a %d byte image", path, fi.Size(), want, br.imageSize)
	}
	return br, nil
}

// next reads the next entry into sum.
func (br *blocksReader) next(sum *[sumSize]byte) error {
	_, err := io.ReadFull(br.r, sum[:])
	return err
}

func (br *blocksReader) Close() error { return br.f.Close() }

// changedBlocks compares the blocks file of a newer image (cur) with that
// of an older one (base) and returns the extents of cur that differ, merged
// and clipped to cur's size. Blocks past base's end count as changed.
func changedBlocks(ctx context.Context, cur, base *blocksReader) ([]pe.Extent, error) {
	if cur.blockSize != base.blockSize {
		return nil, fmt.Errorf("block sizes differ (%d and %d): %w", cur.blockSize, base.blockSize, pe.ErrNotSupported)
	}
	var (
		exts      []pe.Extent
		cs, bs    [sumSize]byte
		n, nbase  = cur.blocks(), base.blocks()
		blockSize = cur.blockSize
	)
	for i := int64(0); i < n; i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if err := cur.next(&cs); err != nil {
			return nil, fmt.Errorf("block %d: %w", i, err)
		}
		if i < nbase {
			if err := base.next(&bs); err != nil {
				return nil, fmt.Errorf("base block %d: %w", i, err)
			}
			if bytes.Equal(cs[:], bs[:]) {
				continue
			}
		}
		kind := pe.ExtentData
		if cs == zeroSum {
			kind = pe.ExtentHole
		}
		off := i * blockSize
		exts = appendExtent(exts, pe.Extent{Offset: off, Length: min(blockSize, cur.imageSize-off), Kind: kind})
	}
	return exts, nil
}

// appendExtent appends e, merging it into the last extent when they touch
// and are of one kind, so that a fully rewritten 1 TiB disk costs one
// extent of memory, not 16 million.
func appendExtent(exts []pe.Extent, e pe.Extent) []pe.Extent {
	if n := len(exts); n > 0 && exts[n-1].Kind == e.Kind && exts[n-1].End() == e.Offset {
		exts[n-1].Length += e.Length
		return exts
	}
	return append(exts, e)
}
