package queuepublish

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"
	"unsafe"
)

// authorized compares the Authorization header, whole and without a
// "Bearer " prefix, with every secret. It compares SHA-256 digests in
// constant time and checks every secret without stopping at a match, so
// the time taken shows neither which secret matched nor any secret's
// content or length.
func (h *Handler) authorized(header string) bool {
	token := header
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		token = header[7:]
	}
	whole := sha256.Sum256(stringBytes(header))
	bare := sha256.Sum256(stringBytes(token))
	match := 0
	for i := range h.secretDigests {
		match |= compareDigests(whole[:], h.secretDigests[i][:])
		match |= compareDigests(bare[:], h.secretDigests[i][:])
	}
	return match == 1
}

// parseSignature reads a webhook signature header, "sha256=" and the hex
// HMAC-SHA256 of the body, into sig. It says nothing of the secrets, so a
// malformed header is refused before the body is read.
func parseSignature(header string, sig *[sha256.Size]byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok || len(hexSig) != 2*sha256.Size {
		return false
	}
	_, err := hex.Decode(sig[:], stringBytes(hexSig))
	return err == nil
}

// signed checks a parsed webhook signature against the HMAC of the body
// with every secret, in constant time.
func (h *Handler) signed(sig *[sha256.Size]byte, body []byte) bool {
	match := 0
	for _, secret := range h.secrets {
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		match |= compareDigests(mac.Sum(nil), sig[:])
	}
	return match == 1
}

// compareDigests compares two digests in constant time. Tests replace it
// to check which comparisons are made.
var compareDigests = subtle.ConstantTimeCompare

// stringBytes is s as a byte slice without a copy; the slice must not be
// written to. The hash and hex functions only read it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
