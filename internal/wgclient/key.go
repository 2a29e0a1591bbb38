package wgclient

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a WireGuard key: a Curve25519 point or scalar.
const KeyLen = 32

// Key is a WireGuard key: a private key, a public key or a preshared key.
// Its text form, as wg(8) and wg-quick write it, is standard base64.
type Key [KeyLen]byte

// ParseKey decodes a key from its base64 form (44 characters, one "="
// of padding), the only form wg-quick's configuration accepts.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != base64.StdEncoding.EncodedLen(KeyLen) {
		return k, fmt.Errorf("a key is %d base64 characters, this is %d", base64.StdEncoding.EncodedLen(KeyLen), len(s))
	}
	// Strict: no newline tolerance, and the padding bits must be zero,
	// so that each key has exactly one text form.
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return k, errors.New("not a base64-encoded 32-byte key")
	}
	copy(k[:], b)
	return k, nil
}

// String returns the base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// hex returns the lower-case hex form that the UAPI protocol uses.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros: the UAPI's "no key".
func (k Key) IsZero() bool { return k == Key{} }

// PublicKey returns the public key of the private key k.
func (k Key) PublicKey() Key {
	var pub Key
	// X25519 clamps the scalar itself, so an unclamped private key gives
	// the same public key as wg(8) computes.
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// Only a low-order point fails, and the base point is not one.
		panic("curve25519 with the base point: " + err.Error())
	}
	copy(pub[:], p)
	return pub
}

// GeneratePrivateKey returns a new random private key, clamped as wg
// genkey does.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("read random bytes: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// GeneratePresharedKey returns 32 random bytes, as wg genpsk does.
func GeneratePresharedKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("read random bytes: %w", err)
	}
	return k, nil
}
