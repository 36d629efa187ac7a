package main

import (
	"errors"
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
	drawDir  = flag.String("draw", "", "only draw the charts of the sweep.csv in this directory, measuring nothing")
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

// sweepRow is one line of sweep.csv.
type sweepRow struct {
	endpoint            string
	conns, records      int
	reqPerSec, p50, p99 float64
	non2xx              int64
}

const sweepHeader = "endpoint,connections,records_per_request,requests_per_second,records_per_second,p50_ms,p99_ms,non_2xx"

// writeSweep writes the sweep's data, sweep.csv, and draws its charts.
func writeSweep(dir string, points []sweepPoint) error {
	var csv strings.Builder
	csv.WriteString(sweepHeader + "\n")
	var rows []sweepRow
	for _, pt := range points {
		r := sweepRow{pt.endpoint, pt.conns, pt.records, float64(pt.s.Requests) / (float64(pt.s.DurationUS) / 1e6),
			float64(pt.s.P50US) / 1000, float64(pt.s.P99US) / 1000, pt.s.Non2xx}
		rows = append(rows, r)
		fmt.Fprintf(&csv, "%s,%d,%d,%.0f,%.0f,%.3f,%.3f,%d\n", r.endpoint, r.conns, r.records, r.reqPerSec, r.reqPerSec*float64(r.records), r.p50, r.p99, r.non2xx)
	}
	if err := os.WriteFile(filepath.Join(dir, "sweep.csv"), []byte(csv.String()), 0o644); err != nil {
		return err
	}
	return drawSweep(dir, rows)
}

// readSweep reads the sweep.csv of dir, for -draw.
func readSweep(dir string) ([]sweepRow, error) {
	b, err := os.ReadFile(filepath.Join(dir, "sweep.csv"))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 0 || lines[0] != sweepHeader {
		return nil, fmt.Errorf("%s/sweep.csv: not a sweep", dir)
	}
	var rows []sweepRow
	for _, l := range lines[1:] {
		var r sweepRow
		f := strings.Split(l, ",")
		if len(f) != 8 {
			return nil, fmt.Errorf("sweep.csv: %q", l)
		}
		r.endpoint = f[0]
		var errs [6]error
		r.conns, errs[0] = strconv.Atoi(f[1])
		r.records, errs[1] = strconv.Atoi(f[2])
		r.reqPerSec, errs[2] = strconv.ParseFloat(f[3], 64)
		r.p50, errs[3] = strconv.ParseFloat(f[5], 64)
		r.p99, errs[4] = strconv.ParseFloat(f[6], 64)
		r.non2xx, errs[5] = strconv.ParseInt(f[7], 10, 64)
		if err := errors.Join(errs[:]...); err != nil {
			return nil, fmt.Errorf("sweep.csv: %q: %v", l, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// drawSweep draws the charts of the sweep into dir: throughput.svg and
// p99.svg against connections, records.svg against records a request.
func drawSweep(dir string, rows []sweepRow) error {
	series := map[string]*[3][]xy{} // by endpoint: throughput, p99 (by connections), records/s (by records a request)
	for _, r := range rows {
		if series[r.endpoint] == nil {
			series[r.endpoint] = new([3][]xy)
		}
		s := series[r.endpoint]
		if r.endpoint == "queue_publish mode records" {
			s[2] = append(s[2], xy{float64(r.records), r.reqPerSec * float64(r.records)})
		} else {
			s[0] = append(s[0], xy{float64(r.conns), r.reqPerSec})
			s[1] = append(s[1], xy{float64(r.conns), r.p99})
		}
	}
	lines := func(i int, names ...string) []line {
		var ls []line
		for _, n := range names {
			if series[n] == nil {
				continue
			}
			ls = append(ls, line{n, series[n][i]})
		}
		return ls
	}
	recordsConns := ""
	for _, r := range rows {
		if r.endpoint == "queue_publish mode records" {
			recordsConns = strconv.Itoa(r.conns)
		}
	}
	charts := []struct {
		file string
		c    chart
	}{
		{"throughput.svg", chart{title: "Requests per second against connections", x: "connections (wrk, 1 thread)", y: "requests/s", lines: lines(0, "respond", "queue_publish")}},
		{"p99.svg", chart{title: "p99 latency against connections", x: "connections (wrk, 1 thread)", y: "p99 (ms)", lines: lines(1, "respond", "queue_publish")}},
		{"records.svg", chart{title: "Records per second against records a request (mode records)", x: "records a request, " + recordsConns + " connections", y: "records/s", lines: lines(2, "queue_publish mode records")}},
	}
	for _, ch := range charts {
		if len(ch.c.lines) == 0 {
			return fmt.Errorf("%s: no data", ch.file)
		}
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
