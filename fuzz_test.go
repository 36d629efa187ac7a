package queuepublish

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Fuzz targets for everything that reads client input. `go test` runs the
// seed corpus; `.ci/run` fuzzes each for a short time, e.g.
//
//	go test -run '^$' -fuzz '^FuzzParseEnvelope$' -fuzztime 10m .

func FuzzAuthorized(f *testing.F) {
	const secret = "s3cr3t-with-some-length"
	for _, s := range []string{secret, "Bearer " + secret, "bearer " + secret, "BEARER " + secret,
		secret[:5], secret + "x", "Bearer ", "Bearer", "", " " + secret, "Bearer  " + secret, "\x00", strings.Repeat("A", 10000)} {
		f.Add(s)
	}
	h := handlerWithSecrets(secret, "other-secret")
	f.Fuzz(func(t *testing.T, header string) {
		want := header == secret || header == "other-secret"
		if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
			want = want || header[7:] == secret || header[7:] == "other-secret"
		}
		if got := h.authorized(header); got != want {
			t.Errorf("authorized(%q) = %v, want %v", header, got, want)
		}
	})
}

func FuzzSigned(f *testing.F) {
	const secret = "webhook-secret"
	sign := func(body string) string {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(body))
		return "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	for _, body := range []string{`{}`, ``, `{"a":1}`, "\x00\xff"} {
		f.Add(sign(body), body)
		f.Add(strings.ToUpper(sign(body)), body)
		f.Add(sign(body)[:20], body)
		f.Add("sha1="+sign(body)[7:], body)
	}
	h := handlerWithSecrets(secret)
	f.Fuzz(func(t *testing.T, header, body string) {
		hexSig, ok := strings.CutPrefix(header, "sha256=")
		want := ok && strings.EqualFold(hexSig, sign(body)[len("sha256="):])
		if got := signedHeader(h, header, []byte(body)); got != want {
			t.Errorf("signed(%q, %q) = %v, want %v", header, body, got, want)
		}
	})
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[1,2]`, `"\u0000"`, "\"\xff\"", "\xef\xbb\xbf{}", `{"a":1,"a":2}`, `1e400`,
		`{}{}`, `{`, ` `, strings.Repeat("[", 10001) + strings.Repeat("]", 10001), "\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !validJSON(body) {
			return
		}
		// What we accept, a JSON decoder reads as exactly one value.
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber() // numbers beyond float64 are valid JSON
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		if dec.More() {
			t.Fatalf("accepted %q, which holds more than one value", body)
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted invalid UTF-8 %q", body)
		}
	})
}

func FuzzParseEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"records":[{"value":{"a":1}}]}`,
		`{"records":[{"value":"x","key":"k","headers":{"h":"v"},"partition":2}]}`,
		`{"records":[{"value":1},{"value":[1,{"b":null}]}]}`,
		`{"records":[]}`, `{}`, `[]`, `{"records":[{"key":"k"}]}`, `{"records":[{"value":1,"headers":{"h":1}}]}`,
		`{"records":[{"value":1,"partition":-1}]}`, `{"records":[{"value":1,"partition":1e3}]}`,
		`{"records":[{"value":1}]}x`, `{"records":[{"value":1}`, `{"records":[{"value":"\u00e9\ud83d\ude00"}]}`,
		`{"records":[{"value":1,"value":2}]}`, `{"records":[{"value":1}],"records":[{"value":2}]}`,
	} {
		f.Add([]byte(s))
	}
	h := &Handler{MaxRecords: 5, Mode: modeRecords}
	f.Fuzz(func(t *testing.T, body []byte) {
		recs, cerr := h.parseEnvelope(body, time.Now())
		if cerr != nil {
			if cerr.status != 400 || !json.Valid(cerr.body) {
				t.Fatalf("%q: answer %d %s", body, cerr.status, cerr.body)
			}
			return
		}
		if !validJSON(body) {
			t.Fatalf("accepted a body that is not valid JSON: %q", body)
		}
		if len(recs) == 0 || len(recs) > h.MaxRecords {
			t.Fatalf("%q: %d records", body, len(recs))
		}
		for _, rec := range recs {
			// Each value is valid JSON, taken verbatim from the body.
			if !validJSON(rec.Value) || !bytes.Contains(body, rec.Value) {
				t.Fatalf("%q: value %q is not a JSON value of the body", body, rec.Value)
			}
			if rec.Partition < -1 {
				t.Fatalf("%q: partition %d", body, rec.Partition)
			}
		}
	})
}

func FuzzSchema(f *testing.F) {
	for _, s := range []string{`{"id":1,"items":[{"sku":"a"}]}`, `{"id":0}`, `[]`, `null`, `{"id":1e400,"items":[]}`,
		`{"id":1,"items":[{"sku":"` + strings.Repeat("x", 100) + `"}],"extra":{}}`} {
		f.Add([]byte(s))
	}
	h := schemaHandler(f, "testdata/order.schema.json", modeBody)
	f.Fuzz(func(t *testing.T, body []byte) {
		if !validJSON(body) {
			return
		}
		cerr := h.checkSchema([]*record{newRecord(body, time.Now(), time.Second)})
		if cerr == nil {
			return
		}
		var ans struct {
			Err    string
			Issues []schemaIssue
		}
		if cerr.status != 400 || json.Unmarshal(cerr.body, &ans) != nil || len(ans.Issues) == 0 || len(ans.Issues) > maxSchemaIssues {
			t.Fatalf("%q: answer %d %s", body, cerr.status, cerr.body)
		}
		for _, issue := range ans.Issues {
			if issue.Path != "" && !strings.HasPrefix(issue.Path, "/") {
				t.Fatalf("%q: issue path %q is not a JSON pointer", body, issue.Path)
			}
		}
	})
}
