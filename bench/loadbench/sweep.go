package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

var (
	sweepDir = flag.String("sweep", "", "also measure respond and queue_publish at 1 to 256 connections, and mode records at 1 to 500 records a request, and write the results to this directory as CSV and SVG charts")
	sweepDur = flag.Duration("sweep-duration", 3*time.Second, "length of each run of -sweep")
)

// The points of the sweep.
var (
	sweepConns   = []int{1, 4, 16, 64, 256}
	sweepRecords = []int{1, 10, 100, 500}
)

// sweepPoint is one run of the sweep.
type sweepPoint struct {
	endpoint string
	conns    int
	records  int // a request
	s        sample
}

// sweep runs the sweep, writes sweep.csv and the charts into dir, and
// returns the records that queue_publish acknowledged in it.
func (p *procs) sweep(dir string, env []string) (int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	var points []sweepPoint
	acked := int64(0)
	for _, c := range sweepConns {
		for _, ep := range []struct{ name, url string }{{"respond", respondURL}, {"queue_publish", publishURL}} {
			s, err := p.measure(ep.url, c, *sweepDur, env)
			if err != nil {
				return acked, err
			}
			if ep.url == publishURL {
				acked += s.Requests - s.Non2xx
			}
			points = append(points, sweepPoint{ep.name, c, 1, s})
		}
	}
	for _, n := range sweepRecords {
		s, err := p.measure(recordsURL, *conns, *sweepDur, append(slices.Clone(env), "BENCH_BODY="+recordsBodyOf(n)))
		if err != nil {
			return acked, err
		}
		acked += int64(n) * (s.Requests - s.Non2xx)
		points = append(points, sweepPoint{"queue_publish mode records", *conns, n, s})
	}
	for _, pt := range points {
		if pt.endpoint != "respond" && (pt.s.Non2xx > 0 || pt.s.SocketErrs > 0) {
			return acked, fmt.Errorf("sweep: queue_publish answered %d non-2xx, %d socket errors at %d connections", pt.s.Non2xx, pt.s.SocketErrs, pt.conns)
		}
	}
	return acked, writeSweep(dir, points)
}

// writeSweep writes the sweep's data and draws its charts.
func writeSweep(dir string, points []sweepPoint) error {
	var csv strings.Builder
	csv.WriteString("endpoint,connections,records_per_request,requests_per_second,records_per_second,p50_ms,p99_ms,non_2xx\n")
	series := map[string]*[3][]xy{} // by endpoint: throughput, p99 (by connections), records/s (by records a request)
	for _, pt := range points {
		rps := float64(pt.s.Requests) / (float64(pt.s.DurationUS) / 1e6)
		fmt.Fprintf(&csv, "%s,%d,%d,%.0f,%.0f,%.3f,%.3f,%d\n", pt.endpoint, pt.conns, pt.records, rps, rps*float64(pt.records),
			float64(pt.s.P50US)/1000, float64(pt.s.P99US)/1000, pt.s.Non2xx)
		if series[pt.endpoint] == nil {
			series[pt.endpoint] = new([3][]xy)
		}
		s := series[pt.endpoint]
		if pt.records == 1 && pt.endpoint != "queue_publish mode records" {
			s[0] = append(s[0], xy{float64(pt.conns), rps})
			s[1] = append(s[1], xy{float64(pt.conns), float64(pt.s.P99US) / 1000})
		} else {
			s[2] = append(s[2], xy{float64(pt.records), rps * float64(pt.records)})
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sweep.csv"), []byte(csv.String()), 0o644); err != nil {
		return err
	}
	lines := func(i int, names ...string) []line {
		var ls []line
		for _, n := range names {
			ls = append(ls, line{n, series[n][i]})
		}
		return ls
	}
	charts := []struct {
		file string
		c    chart
	}{
		{"throughput.svg", chart{title: "Requests per second against connections", x: "connections (wrk, 1 thread)", y: "requests/s", lines: lines(0, "respond", "queue_publish")}},
		{"p99.svg", chart{title: "p99 latency against connections", x: "connections (wrk, 1 thread)", y: "p99 (ms)", lines: lines(1, "respond", "queue_publish")}},
		{"records.svg", chart{title: "Records per second against records a request (mode records)", x: "records a request, " + strconv.Itoa(*conns) + " connections", y: "records/s", lines: lines(2, "queue_publish mode records")}},
	}
	for _, ch := range charts {
		if err := os.WriteFile(filepath.Join(dir, ch.file), []byte(ch.c.svg()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// recordsBodyOf is a records-mode body of n seed payloads.
func recordsBodyOf(n int) string {
	var b strings.Builder
	b.WriteString(`{"records":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"value":` + seedBody + `}`)
	}
	b.WriteString(`]}`)
	return b.String()
}
