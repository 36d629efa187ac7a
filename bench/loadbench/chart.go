package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// A small SVG line chart with a logarithmic x axis (the sweep's points
// grow by factors) and a linear y axis from zero: enough for the
// benchmark's charts without a plotting tool or the network.
type chart struct {
	title, x, y string
	lines       []line
}

type line struct {
	name   string
	points []xy
}

type xy struct{ x, y float64 }

const (
	chartW, chartH         = 640, 400
	marginL, marginR       = 80, 20
	marginTop, marginBelow = 40, 60
)

var chartColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

func (c chart) svg() string {
	// Points off a log axis, or not numbers, are left out.
	for i, l := range c.lines {
		c.lines[i].points = slices.DeleteFunc(slices.Clone(l.points), func(p xy) bool {
			return !(p.x > 0) || math.IsNaN(p.y) || math.IsInf(p.y, 0) || math.IsInf(p.x, 0)
		})
	}
	c.lines = slices.DeleteFunc(c.lines, func(l line) bool { return len(l.points) == 0 })
	if len(c.lines) == 0 {
		c.lines = []line{{name: "no data", points: []xy{{1, 0}}}}
	}
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, l := range c.lines {
		for _, p := range l.points {
			xmin, xmax, ymax = math.Min(xmin, p.x), math.Max(xmax, p.x), math.Max(ymax, p.y)
		}
	}
	if xmax <= xmin {
		xmax = xmin * 10
	}
	ymax = niceCeil(ymax)
	pw, ph := float64(chartW-marginL-marginR), float64(chartH-marginTop-marginBelow)
	px := func(x float64) float64 {
		return marginL + pw*(math.Log(x)-math.Log(xmin))/(math.Log(xmax)-math.Log(xmin))
	}
	py := func(y float64) float64 { return marginTop + ph*(1-y/ymax) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" text-anchor="middle">%s</text>`+"\n", chartW/2, html.EscapeString(c.title))
	// Axes, ticks and grid.
	for i := 0; i <= 5; i++ {
		y := ymax * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, py(y), chartW-marginR, py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, py(y)+4, tickLabel(y))
	}
	for _, p := range c.lines[0].points {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", px(p.x), marginTop, px(p.x), chartH-marginBelow)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(p.x), chartH-marginBelow+16, tickLabel(p.x))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", marginL, chartH-marginBelow, chartW-marginR, chartH-marginBelow)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", marginL, marginTop, marginL, chartH-marginBelow)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", marginL+int(pw)/2, chartH-marginBelow+36, html.EscapeString(c.x))
	fmt.Fprintf(&b, `<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>`+"\n", marginTop+int(ph)/2, marginTop+int(ph)/2, html.EscapeString(c.y))
	// The lines, their points and the legend.
	for i, l := range c.lines {
		color := chartColors[i%len(chartColors)]
		var pts []string
		for _, p := range l.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.x), py(p.y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		for _, p := range l.points {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %s</title></circle>`+"\n", px(p.x), py(p.y), color, html.EscapeString(l.name), tickLabel(p.y))
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			marginL+12, marginTop+8+18*i, color, marginL+30, marginTop+18+18*i, html.EscapeString(l.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to a round multiple of a power of ten, which five
// grid lines divide evenly.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tickLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.3gk", v/1e3)
	case v >= 100 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
