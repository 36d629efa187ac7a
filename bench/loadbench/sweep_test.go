package main

import (
	"encoding/xml"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The charts are drawn from sweep.csv: valid SVG, one polyline a series
// with a point a row, each labelled.
func TestDrawSweep(t *testing.T) {
	dir := t.TempDir()
	csv := sweepHeader + `
respond,1,1,6385,6385,0.115,3.679,0
queue_publish,1,1,2045,2045,0.440,2.776,0
respond,64,1,22720,22720,2.261,13.801,0
queue_publish,64,1,16829,16829,3.205,11.718,0
queue_publish mode records,64,1,15102,15102,3.557,12.887,0
queue_publish mode records,64,100,5561,556121,10.696,109.989,0
`
	if err := os.WriteFile(filepath.Join(dir, "sweep.csv"), []byte(csv), 0o644); err != nil {
		t.Fatal(err)
	}
	rows, err := readSweep(dir)
	if err != nil || len(rows) != 6 {
		t.Fatalf("read %d rows, %v", len(rows), err)
	}
	if err := drawSweep(dir, rows); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]struct{ lines, points int }{"throughput.svg": {2, 4}, "p99.svg": {2, 4}, "records.svg": {1, 2}} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		var svg struct {
			Polylines []struct {
				Points string `xml:"points,attr"`
			} `xml:"polyline"`
			Circles []struct{} `xml:"circle"`
		}
		if err := xml.Unmarshal(b, &svg); err != nil {
			t.Fatalf("%s is not valid SVG: %v", file, err)
		}
		if len(svg.Polylines) != want.lines || len(svg.Circles) != want.points {
			t.Errorf("%s: %d lines and %d points, want %d and %d", file, len(svg.Polylines), len(svg.Circles), want.lines, want.points)
		}
		if file == "throughput.svg" && (!strings.Contains(string(b), ">respond<") || !strings.Contains(string(b), ">queue_publish<")) {
			t.Errorf("%s has no legend for both endpoints", file)
		}
	}
}

// A chart of no usable point is still an SVG, not NaN coordinates or a
// panic.
func TestChartWithoutData(t *testing.T) {
	for _, c := range []chart{{title: "none"}, {title: "zeros", lines: []line{{"x", []xy{{0, 1}, {4, math.NaN()}}}}}} {
		svg := c.svg()
		if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil || strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
			t.Errorf("%s: %v\n%s", c.title, err, svg)
		}
	}
}
