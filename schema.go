package queuepublish

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// maxSchemaIssues bounds the issues an answer lists.
const maxSchemaIssues = 20

// compileSchema reads and compiles the JSON Schema in a file. The draft is
// the one its $schema names (2020-12 if it names none).
func compileSchema(path string) (*jsonschema.Schema, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	return jsonschema.NewCompiler().Compile(abs)
}

// schemaIssue is one way a value fails the schema: where (a JSON pointer
// into the request body) and why.
type schemaIssue struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// checkSchema validates the value of every record against the schema and
// returns a 400 listing the issues if any value fails. In records mode the
// paths point into the envelope.
func (h *Handler) checkSchema(recs []*record) *rejection {
	var issues []schemaIssue
	for i, rec := range recs {
		prefix := h.mode.valuePath(i)
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(rec.Value))
		if err != nil {
			// The body passed the JSON check: this cannot happen.
			return badRequest(rejectSchema, "record %d: %v", i, err)
		}
		if at, ok := hugeNumber(doc, prefix); ok {
			issues = append(issues, schemaIssue{Path: at, Message: msgHugeNumber})
			break
		}
		err = h.schema.Validate(doc)
		var verr *jsonschema.ValidationError
		if errors.As(err, &verr) {
			issues = appendIssues(issues, verr.BasicOutput(), prefix)
		} else if err != nil {
			return badRequest(rejectSchema, "record %d: %v", i, err)
		}
		if len(issues) >= maxSchemaIssues {
			break
		}
	}
	if issues == nil {
		return nil
	}
	issues = issues[:min(len(issues), maxSchemaIssues)]
	b, err := json.Marshal(struct {
		Err    string        `json:"err"`
		Issues []schemaIssue `json:"issues"`
	}{"payload does not match schema", issues})
	if err != nil {
		return badRequest(rejectSchema, "payload does not match schema")
	}
	message := "payload does not match schema:"
	for _, is := range issues {
		message += " " + cmp.Or(is.Path, "/") + ": " + is.Message + ";"
	}
	return &rejection{reason: rejectSchema, status: http.StatusBadRequest, body: b, message: strings.TrimSuffix(message, ";")}
}

// The validator compares numbers exactly, as big.Rat, and turning a
// number like 1e999999 into one takes about 60 ms of CPU: a body full of
// them would take minutes. Numbers beyond these bounds (far beyond what a
// float64 or a decimal type holds) are refused when a schema is checked;
// without a schema, bodies are stored as sent.
const (
	maxNumberDigits   = 1000
	maxNumberExponent = 1000
	msgHugeNumber     = "number too large to check against the schema"
)

// hugeNumber returns the JSON pointer of the first number in v beyond the
// bounds above.
func hugeNumber(v any, at string) (string, bool) {
	switch v := v.(type) {
	case json.Number:
		mantissa, exp, _ := strings.Cut(strings.ToLower(string(v)), "e")
		if len(mantissa) > maxNumberDigits {
			return at, true
		}
		if exp != "" {
			n, err := strconv.Atoi(exp)
			if err != nil || n > maxNumberExponent || n < -maxNumberExponent {
				return at, true
			}
		}
	case []any:
		for i, e := range v {
			if p, ok := hugeNumber(e, at+"/"+strconv.Itoa(i)); ok {
				return p, true
			}
		}
	case map[string]any:
		for k, e := range v {
			if p, ok := hugeNumber(e, at+"/"+pointerEscaper.Replace(k)); ok {
				return p, true
			}
		}
	}
	return "", false
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// appendIssues adds the leaf errors of a basic output: the ones that say
// what is wrong, not that a subschema failed.
func appendIssues(issues []schemaIssue, out *jsonschema.OutputUnit, prefix string) []schemaIssue {
	start := len(issues)
	for _, unit := range out.Errors {
		if unit.Error == nil {
			continue
		}
		msg := unit.Error.String()
		if msg == "" || isSummary(msg) {
			continue
		}
		issues = append(issues, schemaIssue{Path: prefix + unit.InstanceLocation, Message: msg})
	}
	// The validator reports properties in no fixed order.
	slices.SortStableFunc(issues[start:], func(a, b schemaIssue) int {
		return cmp.Or(strings.Compare(a.Path, b.Path), strings.Compare(a.Message, b.Message))
	})
	if len(issues) == start && out.Error != nil {
		issues = append(issues, schemaIssue{Path: prefix + out.InstanceLocation, Message: out.Error.String()})
	}
	return issues
}

// isSummary tells the messages that only say a subschema failed, which the
// issues below them explain.
func isSummary(msg string) bool {
	return msg == "validation failed"
}
