// Package confluent is the wire format of Confluent REST Proxy's produce
// APIs, which mode confluent speaks so that a client written for the REST
// Proxy (or Confluent Cloud's REST endpoint) works unchanged:
//
//	v3: POST /v3/clusters/{cluster_id}/topics/{topic}/records (also under
//	    /kafka, as Confluent Cloud has it), application/json: one record
//	    object, or several concatenated; with Transfer-Encoding: chunked,
//	    a stream of them, each answered as it is settled
//	v2: POST /topics/{topic} and /topics/{topic}/partitions/{partition},
//	    application/vnd.kafka.json.v2+json or .binary.v2+json:
//	    {"records":[{"key","value","partition"}]}
//
// It reads a request's route, media type and records, and writes the
// answers' bodies; serving them is the Caddy module's. The answers have
// the REST Proxy's shapes; their statuses are ours: 200 only for records
// the broker took, 503 when a retry is safe, 504 when the outcome is
// unknown.
package confluent

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// The media types of the produce APIs.
const (
	MediaV2           = "application/vnd.kafka.v2+json" // v2's answers
	MediaV2JSON       = "application/vnd.kafka.json.v2+json"
	MediaV2Binary     = "application/vnd.kafka.binary.v2+json"
	MediaV3           = "application/json"
	MediaV2Avro       = "application/vnd.kafka.avro.v2+json"
	MediaV2JSONSchema = "application/vnd.kafka.jsonschema.v2+json"
	MediaV2Protobuf   = "application/vnd.kafka.protobuf.v2+json"
)

// Separator goes after each of v3's answers, as the REST Proxy writes
// them.
const Separator = "\r\n"

// The error_code values of the REST Proxy that mode confluent answers
// with, beyond a bare HTTP status.
const (
	CodeForbidden         = 40301 // not authorized for the topic
	CodeTopicNotFound     = 40401
	CodePartitionNotFound = 40402
	CodeSchemaRegistry    = 42206 // a format that needs a Schema Registry
	CodeTooManyRequests   = 429   // a rate limit, as the REST Proxy answers its own
	CodeNotWritten        = 50301 // ours: not written, a retry is safe
	CodeOutcomeUnknown    = 50401 // ours: the record may have been written
	CodeKafkaError        = 50002 // the broker refused the record
)

// The labels of queue_publish_rejections_total that the refusals here
// count under: the Caddy module's words for them.
const (
	ReasonRecords     = "invalid_records"
	ReasonPath        = "path"
	ReasonContentType = "content_type"
	ReasonInvalidJSON = "invalid_json"
	ReasonTooLarge    = "too_large"
	ReasonTopic       = "unknown_topic"
	ReasonMethod      = "method"
)

// An Error is a refusal of a request, or of a record of a stream: nothing
// of it is produced.
type Error struct {
	Status  int    // the answer's HTTP status
	Code    int    // its error_code
	Message string // its message
	Reason  string // the label of queue_publish_rejections_total
	// EndsStream: a record of a stream after which the stream cannot be
	// read on (its JSON is broken, or it is too long).
	EndsStream bool
}

func (e *Error) Error() string { return e.Message }

// refuse is an Error whose error_code is its status.
func refuse(reason string, status int, message string) *Error {
	return &Error{Status: status, Code: status, Message: message, Reason: reason}
}

// badRequest is a 400 whose message says what is wrong.
func badRequest(reason, format string, args ...any) *Error {
	return refuse(reason, http.StatusBadRequest, fmt.Sprintf(format, args...))
}

// dataError is a 400 of a record's data, worded as the REST Proxy's.
func dataError(format string, args ...any) *Error {
	return badRequest(ReasonRecords, "Bad Request: "+format, args...)
}

// The refusals with a fixed message, most of them the REST Proxy's own.
var (
	ErrPath    = refuse(ReasonPath, http.StatusNotFound, "HTTP 404 Not Found")
	ErrMethod  = refuse(ReasonMethod, http.StatusMethodNotAllowed, "HTTP 405 Method Not Allowed")
	ErrMedia   = refuse(ReasonContentType, http.StatusUnsupportedMediaType, "HTTP 415 Unsupported Media Type")
	ErrCluster = refuse(ReasonTopic, http.StatusNotFound, "Cluster not found.")
	ErrEmpty   = refuse(ReasonInvalidJSON, http.StatusUnprocessableEntity, "Payload error. Request body is empty. Data is required.")
	// A partition number that cannot exist, in a path or a record.
	ErrPartitionNotFound = &Error{Status: http.StatusNotFound, Code: CodePartitionNotFound, Message: "Partition not found.", Reason: ReasonRecords}
	// The formats that need a Schema Registry.
	ErrSchemaRegistry = &Error{Status: http.StatusUnprocessableEntity, Code: CodeSchemaRegistry, Reason: ReasonRecords,
		Message: "Payload error. Schema Registry formats (AVRO, JSONSCHEMA, PROTOBUF, or data without a type) are not supported: give each key and value a type of BINARY, JSON or STRING."}
	// A body whose JSON is broken, in the words of the module's other
	// modes; ErrBrokenJSON ends a stream.
	ErrInvalidJSON = refuse(ReasonInvalidJSON, http.StatusBadRequest, "payload not valid JSON")
	ErrBrokenJSON  = endsStream(ErrInvalidJSON)
	// A record of a stream longer than max_size, in the words of the
	// module's other modes; it ends the stream.
	ErrRecordTooLarge = endsStream(refuse(ReasonTooLarge, http.StatusRequestEntityTooLarge, "payload too large"))
)

func endsStream(e *Error) *Error {
	ends := *e
	ends.EndsStream = true
	return &ends
}

// A Route is what a request's path and Content-Type name.
type Route struct {
	V3        bool
	Cluster   string // v3: the cluster ID of the path
	Topic     string
	Partition int  // v2: the partition of the path; -1: none
	Binary    bool // v2: base64 keys and values, not embedded JSON
	// Shapes are, in v3, the type and size of each record's key and
	// value, for its answer, by position in the request: ParseBody
	// fills them.
	Shapes []Shape
}

// A Shape is what a v3 answer says of a record's key and value: the type
// the request gave ("" if it had none) and the size in bytes, -1 for a
// null.
type Shape struct {
	KeyType, ValueType string
	KeySize, ValueSize int
}

// ParseRoute reads the API, cluster, topic and partition of a path. A
// path of no produce API is refused, answered in v3's shape unless it
// starts as v2's: the Route is never nil.
func ParseRoute(path string) (*Route, *Error) {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if parts[0] == "kafka" && len(parts) > 1 && parts[1] == "v3" {
		parts = parts[1:] // Confluent Cloud's prefix
	}
	switch {
	case len(parts) == 6 && parts[0] == "v3" && parts[1] == "clusters" && parts[3] == "topics" && parts[5] == "records" && parts[2] != "" && parts[4] != "":
		return &Route{V3: true, Cluster: parts[2], Topic: parts[4], Partition: -1}, nil
	case (len(parts) == 2 || len(parts) == 4 && parts[2] == "partitions") && parts[0] == "topics" && parts[1] != "":
		route := &Route{Topic: parts[1], Partition: -1}
		if len(parts) == 4 {
			// Kafka's partitions are numbered in an int32.
			n, err := strconv.ParseInt(parts[3], 10, 32)
			if err != nil || n < 0 || parts[3] != strconv.FormatInt(n, 10) {
				return route, ErrPartitionNotFound
			}
			route.Partition = int(n)
		}
		return route, nil
	}
	return &Route{V3: parts[0] != "topics", Partition: -1}, ErrPath
}

// CheckMedia checks a request's method and Content-Type: v3 takes
// application/json; v2 the embedded formats json and binary (which it
// notes in r.Binary), and refuses those of a Schema Registry, which
// queue_publish does not have, saying so.
func (r *Route) CheckMedia(method, contentType string) *Error {
	if method != http.MethodPost {
		return ErrMethod
	}
	media, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ErrMedia
	}
	if r.V3 {
		if media != MediaV3 {
			return ErrMedia
		}
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
			return badRequest(ReasonContentType, `Unsupported charset in Content-Type header. Supports "UTF-8".`)
		}
		return nil
	}
	switch media {
	case MediaV2JSON:
		return nil
	case MediaV2Binary:
		r.Binary = true
		return nil
	case MediaV2Avro, MediaV2JSONSchema, MediaV2Protobuf:
		return refuse(ReasonContentType, http.StatusUnsupportedMediaType,
			"embedded format "+strings.TrimSuffix(strings.TrimPrefix(media, "application/vnd.kafka."), ".v2+json")+
				" needs a Schema Registry, which this endpoint does not have: send "+MediaV2JSON+" or "+MediaV2Binary)
	}
	return ErrMedia
}

// CheckCluster refuses a v3 path that names another cluster than the one
// configured, if one is.
func (r *Route) CheckCluster(configured string) *Error {
	if r.V3 && configured != "" && r.Cluster != configured {
		return ErrCluster
	}
	return nil
}

// ClusterID is the cluster_id of v3's answers: the one configured, or the
// one the path named.
func (r *Route) ClusterID(configured string) string {
	if configured != "" {
		return configured
	}
	return r.Cluster
}

// quote is s as a JSON string, as encoding/json writes it.
func quote(s string) []byte {
	q, _ := json.Marshal(s)
	return q
}
