package queuepublish

import (
	"cmp"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/queuepublish/caddy-queue-publish/internal/producer"
)

// Mode confluent speaks Confluent REST Proxy's produce APIs, so that a
// client written for the REST Proxy (or Confluent Cloud's REST endpoint)
// works unchanged:
//
//	v3: POST /v3/clusters/{cluster_id}/topics/{topic}/records (also under
//	    /kafka, as Confluent Cloud has it), application/json: one record
//	    object, or several concatenated; with Transfer-Encoding: chunked,
//	    a stream of them, each answered as it is settled
//	v2: POST /topics/{topic} and /topics/{topic}/partitions/{partition},
//	    application/vnd.kafka.json.v2+json or .binary.v2+json:
//	    {"records":[{"key","value","partition"}]}
//
// The answers have the REST Proxy's shapes; their statuses are ours: 200
// only for records the broker took, 503 when a retry is safe, 504 when the
// outcome is unknown.

// The media types of mode confluent.
const (
	mediaV2      = "application/vnd.kafka.v2+json"
	mediaV2JSON  = "application/vnd.kafka.json.v2+json"
	mediaV2Bin   = "application/vnd.kafka.binary.v2+json"
	mediaV3      = "application/json"
	v3Separator  = "\r\n" // after each of v3's answers, as the REST Proxy writes them
	mediaV2Avro  = "application/vnd.kafka.avro.v2+json"
	mediaV2JSch  = "application/vnd.kafka.jsonschema.v2+json"
	mediaV2Proto = "application/vnd.kafka.protobuf.v2+json"
)

// The error_code values of the REST Proxy that mode confluent answers
// with, beyond a bare HTTP status.
const (
	codeTopicNotFound     = 40401
	codePartitionNotFound = 40402
	codeSchemaRegistry    = 42206 // a format that needs a Schema Registry
	codeNotWritten        = 50301 // ours: not written, a retry is safe
	codeOutcomeUnknown    = 50401 // ours: the record may have been written
	codeKafkaError        = 50002 // the broker refused the record
)

// restRoute is what a request's path and Content-Type name in mode
// confluent.
type restRoute struct {
	v3        bool
	cluster   string // v3: the cluster ID of the path
	topic     string
	partition int  // v2: the partition of the path; -1: none
	binary    bool // v2: base64 keys and values, not embedded JSON
	// v3: the type and size of each record's key and value, for its
	// answer, by position in the request.
	shapes []restShape
}

// restShape is what a v3 answer says of a record's key and value: the
// type the request gave ("" if it had none) and the size in bytes, -1
// for a null.
type restShape struct {
	keyType, valueType string
	keySize, valueSize int
}

// The refusals of mode confluent with the REST Proxy's own messages.
var (
	refusedRESTPath   = refuse(rejectPath, http.StatusNotFound, "HTTP 404 Not Found")
	refusedRESTMethod = refuse(rejectMethod, http.StatusMethodNotAllowed, "HTTP 405 Method Not Allowed")
	refusedRESTMedia  = refuse(rejectContentType, http.StatusUnsupportedMediaType, "HTTP 415 Unsupported Media Type")
	refusedCluster    = refuse(rejectTopic, http.StatusNotFound, "Cluster not found.")
	refusedRESTEmpty  = refuse(rejectInvalidJSON, http.StatusUnprocessableEntity, "Payload error. Request body is empty. Data is required.")
	// A partition number that cannot exist, in a path or a record.
	refusedPartitionNotFound = restRefusal(refuse(rejectRecords, http.StatusNotFound, "Partition not found."), 0, codePartitionNotFound, "")
	refusedRESTStream        = refuse(rejectIdempotency, http.StatusBadRequest, "Idempotency-Key applies to a request of known length; a streamed request's records are answered one by one")
)

// serveConfluent serves a request of mode confluent: its path and
// Content-Type say which API it speaks, then it goes the steps of any
// request, or, a v3 request of unknown length, is streamed.
func (h *Handler) serveConfluent(x *exchange, r *http.Request) error {
	api, ref := parseRESTRoute(r.URL.Path)
	x.api = api
	x.contentType = mediaV3
	if !api.v3 {
		x.contentType = mediaV2
	}
	// The credentials come first, as a REST Proxy with authentication
	// checks them: a client without them learns nothing of the paths,
	// methods and media types served here, and its body is not read.
	// (The path is parsed before: a token is valid for its topic only.)
	if ref := h.admitCredentials(x, r); ref != nil {
		return x.refuse(ref)
	}
	if ref == nil {
		ref = h.checkRESTMedia(api, r)
	}
	if ref != nil {
		return x.refuse(ref)
	}
	if api.v3 && r.ContentLength < 0 && r.Method == http.MethodPost {
		return h.serveStream(x, r)
	}
	return h.serve(x, r)
}

// parseRESTRoute reads the API, cluster, topic and partition of a path of
// mode confluent. A path of no produce API is refused, answered in v3's
// shape unless it starts as v2's.
func parseRESTRoute(path string) (*restRoute, *refusal) {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if parts[0] == "kafka" && len(parts) > 1 && parts[1] == "v3" {
		parts = parts[1:] // Confluent Cloud's prefix
	}
	switch {
	case len(parts) == 6 && parts[0] == "v3" && parts[1] == "clusters" && parts[3] == "topics" && parts[5] == "records" && parts[2] != "" && parts[4] != "":
		return &restRoute{v3: true, cluster: parts[2], topic: parts[4], partition: -1}, nil
	case (len(parts) == 2 || len(parts) == 4 && parts[2] == "partitions") && parts[0] == "topics" && parts[1] != "":
		api := &restRoute{topic: parts[1], partition: -1}
		if len(parts) == 4 {
			// Kafka's partitions are numbered in an int32.
			n, err := strconv.ParseInt(parts[3], 10, 32)
			if err != nil || n < 0 || parts[3] != strconv.FormatInt(n, 10) {
				return api, refusedPartitionNotFound
			}
			api.partition = int(n)
		}
		return api, nil
	}
	return &restRoute{v3: parts[0] != "topics", partition: -1}, refusedRESTPath
}

// checkRESTMedia checks the method and the Content-Type: v3 takes
// application/json; v2 the embedded formats json and binary, and refuses
// those of a Schema Registry, which queue_publish does not have, saying so.
func (h *Handler) checkRESTMedia(api *restRoute, r *http.Request) *refusal {
	if r.Method != http.MethodPost {
		return refusedRESTMethod
	}
	media, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return refusedRESTMedia
	}
	if api.v3 {
		if media != mediaV3 {
			return refusedRESTMedia
		}
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
			return badRequest(rejectContentType, `Unsupported charset in Content-Type header. Supports "UTF-8".`)
		}
		return nil
	}
	switch media {
	case mediaV2JSON:
		return nil
	case mediaV2Bin:
		api.binary = true
		return nil
	case mediaV2Avro, mediaV2JSch, mediaV2Proto:
		return refuse(rejectContentType, http.StatusUnsupportedMediaType,
			"embedded format "+strings.TrimSuffix(strings.TrimPrefix(media, "application/vnd.kafka."), ".v2+json")+
				" needs a Schema Registry, which this endpoint does not have: send "+mediaV2JSON+" or "+mediaV2Bin)
	}
	return refusedRESTMedia
}

// topic is the topic a request of mode confluent names, if allowed.
func (h *Handler) restTopic(api *restRoute) (string, *refusal) {
	if api.v3 && h.ClusterID != "" && api.cluster != h.ClusterID {
		return "", refusedCluster
	}
	if !h.allowTopics[api.topic] {
		return "", refusedTopic
	}
	return api.topic, nil
}

// restClusterID is the cluster_id of v3's answers: the one configured, or
// the one the path named.
func (h *Handler) restClusterID(api *restRoute) string {
	if h.ClusterID != "" {
		return h.ClusterID
	}
	return api.cluster
}

// answerRESTRefusal answers a refusal in mode confluent: the REST
// Proxy's {"error_code","message"}, with its status where its clients
// expect one of their own (401 and a challenge for wrong credentials).
func (x *exchange) answerRESTRefusal(ref *refusal) error {
	switch ref {
	case refusedAuth:
		x.w.Header()["Www-Authenticate"] = []string{`Basic realm="queue_publish"`}
	case refusedRESTMethod:
		x.w.Header()["Allow"] = []string{"POST"}
	}
	status, code, message := restError(ref)
	return x.answerRESTError(status, code, message)
}

// restError is the status, error_code and message of a refusal in mode
// confluent.
func restError(ref *refusal) (status, code int, message string) {
	return cmp.Or(ref.restStatus, ref.status), cmp.Or(ref.restCode, ref.status), cmp.Or(ref.restMessage, ref.message)
}

// answerRESTError writes {"error_code","message"}.
func (x *exchange) answerRESTError(status, code int, message string) error {
	b := appendRESTError(make([]byte, 0, 64+len(message)), code, message)
	if x.api.v3 {
		b = append(b, v3Separator...)
	}
	return x.answer(status, b)
}

func appendRESTError(b []byte, code int, message string) []byte {
	b = append(b, `{"error_code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"message":`...)
	b = append(b, quote(message)...)
	return append(b, '}')
}

// restFailureCode is the error_code of a record that failed to publish:
// ours, the status and a digit, where the REST Proxy's codes do not say
// whether a retry is safe.
func restFailureCode(o producer.Outcome) int {
	switch o {
	case outcomeRetry:
		return codeNotWritten
	case outcomeUnknown:
		return codeOutcomeUnknown
	case outcomeTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return codeKafkaError
}
