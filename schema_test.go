package queuepublish

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

func schemaHandler(t testing.TB, file, mode string) *Handler {
	t.Helper()
	sch, err := compileSchema(file)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := modeOf(mode)
	return &Handler{Requests: Requests{schema: sch, Mode: mode, mode: m, Timeout: caddy.Duration(time.Second)}}
}

func TestSchemaIssues(t *testing.T) {
	h := schemaHandler(t, "testdata/order.schema.json", modeBody)
	for _, tt := range []struct {
		body string
		want []schemaIssue // nil: valid
	}{
		{`{"id":1,"items":[{"sku":"A-1"}]}`, nil},
		{`{"id":1e1000,"items":[{"sku":"A-1","n":-12.5e-1000}]}`, nil},
		// Numbers too costly to compare exactly are refused, not parsed.
		{`{"id":1e999999,"items":[{"sku":"a"}]}`, []schemaIssue{{"/id", msgHugeNumber}}},
		{`{"id":1,"items":[{"sku":"a","n/x":[1,1E-1001]}]}`, []schemaIssue{{"/items/0/n~1x/1", msgHugeNumber}}},
		{`{"id":1` + strings.Repeat("0", 1000) + `,"items":[{"sku":"a"}]}`, []schemaIssue{{"/id", msgHugeNumber}}},
		{`{"id":0,"items":[{"sku":"far-too-long"},{}],"x":true}`, []schemaIssue{
			{"", "additional properties 'x' not allowed"},
			{"/id", "minimum: got 0, want 1"},
			{"/items/0/sku", "maxLength: got 12, want 8"},
			{"/items/1", "missing property 'sku'"},
		}},
		{`[1]`, []schemaIssue{{"", "got array, want object"}}},
		{`{"items":[]}`, []schemaIssue{{"", "missing property 'id'"}, {"/items", "minItems: got 0, want 1"}}},
	} {
		cerr := h.checkSchema([]*record{newRecord([]byte(tt.body), time.Now(), time.Second)})
		if tt.want == nil {
			if cerr != nil {
				t.Errorf("%s: %s", tt.body, cerr.body)
			}
			continue
		}
		want, _ := json.Marshal(map[string]any{"err": "payload does not match schema", "issues": tt.want})
		if cerr == nil || cerr.status != 400 || string(cerr.body) != string(want) {
			t.Errorf("%s:\n got %v\nwant %s", tt.body, cerr, want)
		}
	}
}

func TestSchemaEarlierDraft(t *testing.T) {
	h := schemaHandler(t, "testdata/draft7.schema.json", modeBody)
	if cerr := h.checkSchema([]*record{newRecord([]byte(`{"reply_to":"x"}`), time.Now(), time.Second)}); cerr == nil ||
		!strings.Contains(string(cerr.body), "missing property 'msg'") {
		t.Errorf("draft-07 schema: got %v", cerr)
	}
	if cerr := h.checkSchema([]*record{newRecord([]byte(`{"msg":"hi"}`), time.Now(), time.Second)}); cerr != nil {
		t.Errorf("valid under draft-07: %s", cerr.body)
	}
}

func TestSchemaMustCompile(t *testing.T) {
	for file, want := range map[string]string{
		"testdata/invalid.schema.json": "schema: ",
		"testdata/missing.json":        "schema: ",
	} {
		h := &Handler{Kafka: Kafka{Brokers: []string{"127.0.0.1:1"}}, Requests: Requests{Topic: "t", Schema: file}, Authentication: Authentication{Secrets: []string{"s"}}}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		err := h.Provision(ctx)
		cancel()
		h.Cleanup()
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: Provision error %v, want one starting with %q", file, err, want)
		}
	}
}

func TestSchemaThroughCaddy(t *testing.T) {
	c := newCluster(t, kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "batches"))
	t.Setenv("QP_TEST_SECRET", testSecret)
	schema, _ := filepath.Abs("testdata/order.schema.json")
	route := func(path, topic, mode string) string {
		return fmt.Sprintf(`	handle %s {
		queue_publish {
			brokers %s
			topic %s
			secret {env.QP_TEST_SECRET}
			schema %s
			mode %s
		}
	}
`, path, c.ListenAddrs()[0], topic, schema, mode)
	}
	startCaddy(t, filepath.Join(t.TempDir(), "caddy.log"), route("/one", "orders", "body")+route("/many", "batches", "records"))
	ok := auth(testSecret)

	if got := do(t, "POST", "/one", ok, strings.NewReader(`{"id":7,"items":[{"sku":"S"}]}`)); got.status != 200 {
		t.Errorf("valid body: %d %s", got.status, got.body)
	}
	got := do(t, "POST", "/one", ok, strings.NewReader(`{"id":"7","items":[{"sku":"S"}]}`))
	if got.status != 400 || got.body != `{"err":"payload does not match schema","issues":[{"path":"/id","message":"got string, want integer"}]}` {
		t.Errorf("invalid body: %d %s", got.status, got.body)
	}
	got = do(t, "POST", "/many", ok, strings.NewReader(`{"records":[{"value":{"id":1,"items":[{"sku":"a"}]}},{"value":{"id":2,"items":[]}}]}`))
	if got.status != 400 || got.body != `{"err":"payload does not match schema","issues":[{"path":"/records/1/value/items","message":"minItems: got 0, want 1"}]}` {
		t.Errorf("invalid record: %d %s", got.status, got.body)
	}
	if got := do(t, "POST", "/many", ok, strings.NewReader(`{"records":[{"value":{"id":1,"items":[{"sku":"a"}]}},{"value":{"id":2,"items":[{"sku":"b"}]}}]}`)); got.status != 200 {
		t.Errorf("valid records: %d %s", got.status, got.body)
	}
	if n1, n2 := len(stored(t, c, "orders")), len(stored(t, c, "batches")); n1 != 1 || n2 != 2 {
		t.Errorf("stored %d orders and %d batch records, want 1 and 2: nothing of a refused request is produced", n1, n2)
	}
}

func BenchmarkSchemaCheck(b *testing.B) {
	h := schemaHandler(b, "testdata/order.schema.json", modeBody)
	rec := newRecord([]byte(`{"id":1,"items":[{"sku":"A-1"},{"sku":"B-2"}]}`), time.Now(), time.Second)
	recs := []*record{rec}
	for b.Loop() {
		if cerr := h.checkSchema(recs); cerr != nil {
			b.Fatal(string(cerr.body))
		}
	}
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
