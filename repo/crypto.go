package repo

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"

	"golang.org/x/crypto/scrypt"
)

// key seals and opens the repository's objects with AES-256-GCM; a nil
// *key is an unencrypted repository (--insecure-no-password).
type key struct {
	aead cipher.AEAD
}

func newKey(raw []byte) (*key, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &key{aead: aead}, nil
}

// seal appends nonce || ciphertext+tag of plain to dst; aad is
// authenticated with it (a chunk's ID: the blob opens only as that chunk).
func (k *key) seal(dst, plain, aad []byte) []byte {
	if k == nil {
		return append(dst, plain...)
	}
	nonce := make([]byte, k.aead.NonceSize())
	rand.Read(nonce) // never fails (the runtime aborts if it cannot)
	dst = append(dst, nonce...)
	return k.aead.Seal(dst, nonce, plain, aad)
}

// errAuth means a sealed object failed authentication: tampered with,
// corrupted, or sealed with another key.
var errAuth = errors.New("authentication failed (corrupt data or wrong key)")

func (k *key) open(sealed, aad []byte) ([]byte, error) {
	if k == nil {
		return sealed, nil
	}
	n := k.aead.NonceSize()
	if len(sealed) < n+k.aead.Overhead() {
		return nil, errAuth
	}
	plain, err := k.aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, errAuth
	}
	return plain, nil
}

// KDF parameters: scrypt as restic uses it, about 0.1 s on these machines.
type kdfParams struct {
	N, R, P int
	Salt    []byte
}

func deriveKey(password string, p kdfParams) ([]byte, error) {
	return scrypt.Key([]byte(password), p.Salt, p.N, p.R, p.P, 32)
}
