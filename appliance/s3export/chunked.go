package s3export

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	"github.com/minio/crc64nvme"
)

// streamingSignedTrailer is signed chunks followed by a signed trailer:
// not supported (receiveBody answers 501).
const streamingSignedTrailer = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

// maxChunkHeader bounds one chunk header line of an aws-chunked body.
const maxChunkHeader = 4096

// chunkedReader decodes an aws-chunked upload body:
//
//	<hex size>[;chunk-signature=<sig>]\r\n<data>\r\n ... 0[;...]\r\n[trailers]\r\n
//
// With a signing key every chunk's signature is checked against the chain
// that starts at the request's seed signature; a bad one fails the read.
type chunkedReader struct {
	r       *bufio.Reader
	sig     *signedRequest // nil: unsigned chunks
	prevSig string
	left    int64       // bytes of the current chunk still to read
	h       interface { // sha256 of the current chunk, checked at its end
		io.Writer
		Sum([]byte) []byte
		Reset()
	}
	chunkSig string
	done     bool
	// checksum is the trailer that carries the body's checksum, and sum
	// its hash of what was read; nil: none.
	checksum *trailerChecksum
}

// trailerChecksum is the checksum trailer x-amz-trailer announces.
type trailerChecksum struct {
	name string // x-amz-checksum-<algorithm>
	sum  hash.Hash
}

func newChunkedReader(r io.Reader, sig *signedRequest, checksum *trailerChecksum) *chunkedReader {
	cr := &chunkedReader{r: bufio.NewReaderSize(r, 64<<10), sig: sig, h: sha256.New(), checksum: checksum}
	if sig != nil {
		cr.prevSig = sig.seedSignature
	}
	return cr
}

// checksumAlgorithms are the x-amz-checksum-* trailers checked.
var checksumAlgorithms = map[string]func() hash.Hash{
	"x-amz-checksum-crc32":     func() hash.Hash { return crc32.NewIEEE() },
	"x-amz-checksum-crc32c":    func() hash.Hash { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) },
	"x-amz-checksum-crc64nvme": func() hash.Hash { return crc64nvme.New() },
	"x-amz-checksum-sha1":      sha1.New,
	"x-amz-checksum-sha256":    sha256.New,
}

// newTrailerChecksum reads the x-amz-trailer header: the checksum to
// check at the body's end, nil if none.
func newTrailerChecksum(header string) (*trailerChecksum, error) {
	name := strings.ToLower(strings.TrimSpace(header))
	if name == "" {
		return nil, nil
	}
	newHash, ok := checksumAlgorithms[name]
	if !ok {
		return nil, fmt.Errorf("x-amz-trailer %q: not a checksum this server knows (%s)", header, "x-amz-checksum-crc32, -crc32c, -crc64nvme, -sha1 or -sha256")
	}
	return &trailerChecksum{name: name, sum: newHash()}, nil
}

var (
	errBadChunk    = errors.New("malformed aws-chunked body")
	errBadChecksum = errors.New("the body does not match its checksum trailer")
)

func (cr *chunkedReader) Read(p []byte) (int, error) {
	for cr.left == 0 {
		if cr.done {
			return 0, io.EOF
		}
		if err := cr.nextChunk(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > cr.left {
		p = p[:cr.left]
	}
	n, err := cr.r.Read(p)
	cr.h.Write(p[:n])
	if cr.checksum != nil {
		cr.checksum.sum.Write(p[:n])
	}
	cr.left -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, err
	}
	if cr.left == 0 {
		if err := cr.endChunk(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// nextChunk reads a chunk header; the zero-size chunk ends the body.
func (cr *chunkedReader) nextChunk() error {
	line, err := cr.line()
	if err != nil {
		return err
	}
	sizeHex, ext, _ := strings.Cut(line, ";")
	size, err := strconv.ParseInt(sizeHex, 16, 64)
	if err != nil || size < 0 {
		return fmt.Errorf("%w: chunk size %q", errBadChunk, sizeHex)
	}
	cr.chunkSig = ""
	if sig, ok := strings.CutPrefix(ext, "chunk-signature="); ok {
		cr.chunkSig = sig
	}
	if cr.sig != nil && cr.chunkSig == "" {
		return fmt.Errorf("%w: chunk without signature", errBadChunk)
	}
	cr.h.Reset()
	cr.left = size
	if size == 0 {
		// The final chunk: its signature covers no data; trailers follow.
		if err := cr.checkSignature(); err != nil {
			return err
		}
		if err := cr.trailers(); err != nil {
			return err
		}
		cr.done = true
	}
	return nil
}

// trailers reads the trailers after the last chunk, and checks the
// checksum trailer announced.
func (cr *chunkedReader) trailers() error {
	found := false
	for {
		l, err := cr.line()
		if err != nil {
			return err
		}
		if l == "" {
			break
		}
		name, value, _ := strings.Cut(l, ":")
		if cr.checksum == nil || !strings.EqualFold(strings.TrimSpace(name), cr.checksum.name) {
			continue
		}
		found = true
		if strings.TrimSpace(value) != base64.StdEncoding.EncodeToString(cr.checksum.sum.Sum(nil)) {
			return fmt.Errorf("%w %s", errBadChecksum, cr.checksum.name)
		}
	}
	if cr.checksum != nil && !found {
		return fmt.Errorf("%w: no trailer %s", errBadChunk, cr.checksum.name)
	}
	return nil
}

func (cr *chunkedReader) endChunk() error {
	crlf := make([]byte, 2)
	if _, err := io.ReadFull(cr.r, crlf); err != nil || string(crlf) != "\r\n" {
		return fmt.Errorf("%w: chunk not followed by CRLF", errBadChunk)
	}
	return cr.checkSignature()
}

// checkSignature verifies the current chunk's signature, which chains
// from the previous one.
func (cr *chunkedReader) checkSignature() error {
	if cr.sig == nil {
		return nil
	}
	toSign := "AWS4-HMAC-SHA256-PAYLOAD\n" + cr.sig.amzDate + "\n" + cr.sig.scope + "\n" +
		cr.prevSig + "\n" + emptySHA256 + "\n" + hex.EncodeToString(cr.h.Sum(nil))
	want := hex.EncodeToString(hmacSHA256(cr.sig.signingKey, toSign))
	if !hmac.Equal([]byte(want), []byte(cr.chunkSig)) {
		return errChunkSignature
	}
	cr.prevSig = cr.chunkSig
	return nil
}

var errChunkSignature = errors.New("chunk signature does not match")

func (cr *chunkedReader) line() (string, error) {
	var b []byte
	for {
		frag, isPrefix, err := cr.r.ReadLine()
		if err != nil {
			if err == io.EOF {
				return "", io.ErrUnexpectedEOF
			}
			return "", err
		}
		b = append(b, frag...)
		if len(b) > maxChunkHeader {
			return "", fmt.Errorf("%w: header line too long", errBadChunk)
		}
		if !isPrefix {
			return string(b), nil
		}
	}
}
