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
func (h *Handler) checkSchema(recs []*record) *clientError {
	var issues []schemaIssue
	for i, rec := range recs {
		prefix := ""
		if h.Mode == modeRecords {
			prefix = "/records/" + strconv.Itoa(i) + "/value"
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(rec.value))
		if err != nil {
			// The body passed the JSON check: this cannot happen.
			return badRequest("record %d: %v", i, err)
		}
		err = h.schema.Validate(doc)
		var verr *jsonschema.ValidationError
		if errors.As(err, &verr) {
			issues = appendIssues(issues, verr.BasicOutput(), prefix)
		} else if err != nil {
			return badRequest("record %d: %v", i, err)
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
		return badRequest("payload does not match schema")
	}
	return &clientError{status: http.StatusBadRequest, body: b}
}

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
