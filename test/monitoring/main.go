// Command monitoring checks the dashboard and the alert rules of
// examples/monitoring against a running Prometheus that scrapes a Caddy
// with queue_publish under load: every query of the dashboard (its panels
// and its variables) must parse and return data, and every alert
// expression must parse and every metric it reads must have series. A
// metric renamed or removed in the module fails it.
//
//	go run ./test/monitoring -prometheus http://127.0.0.1:9090
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	prometheus = flag.String("prometheus", "http://127.0.0.1:9090", "the Prometheus to ask")
	dashboard  = flag.String("dashboard", "examples/monitoring/dashboard.json", "the Grafana dashboard")
	rules      = flag.String("rules", "examples/monitoring/alerts.yml", "the alert rules")
	after      = flag.Int64("after", 0, "wait for a scrape of Caddy after this Unix time (the end of the load)")
)

func main() {
	flag.Parse()
	n, err := check()
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitoring:", err)
		os.Exit(1)
	}
	fmt.Printf("ok: %d queries of the dashboard and the alert rules parse and return data\n", n)
}

func check() (int, error) {
	if err := waitForScrape(time.Unix(*after, 0)); err != nil {
		return 0, err
	}
	exprs, err := dashboardQueries(*dashboard)
	if err != nil {
		return 0, err
	}
	alerts, err := alertExprs(*rules)
	if err != nil {
		return 0, err
	}
	var failed []string
	checked := 0
	for _, q := range exprs {
		checked++
		if n, err := query(q); err != nil || n == 0 {
			failed = append(failed, fmt.Sprintf("dashboard: %s: %d series, %v", q, n, err))
		}
	}
	for name, expr := range alerts {
		checked++
		if _, err := query(expr); err != nil {
			failed = append(failed, fmt.Sprintf("alert %s: %v", name, err))
		}
		for _, sel := range selectors(expr) {
			checked++
			if n, err := query("count(" + sel + ")"); err != nil || n == 0 {
				failed = append(failed, fmt.Sprintf("alert %s: %s has no series (%v)", name, sel, err))
			}
		}
	}
	if failed != nil {
		return checked, fmt.Errorf("%d of %d checks failed:\n  %s", len(failed), checked, strings.Join(failed, "\n  "))
	}
	return checked, nil
}

// dashboardQueries are the PromQL expressions of the dashboard's panels
// and variables, with the variables given values that select everything.
func dashboardQueries(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	// .+: a series without the label does not match, as it would not in
	// Grafana with a value chosen.
	fill := strings.NewReplacer(`$instance`, `.+`, `$topic`, `.+`, `$__rate_interval`, `1m`)
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("panel %q has no query", p.Title)
		}
		for _, t := range p.Targets {
			exprs = append(exprs, fill.Replace(t.Expr))
		}
	}
	// label_values(<selector>, <label>): the selector must have series
	// with the label.
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			return nil, fmt.Errorf("variable %s: %q is not label_values(<selector>, <label>)", v.Name, v.Definition)
		}
		exprs = append(exprs, fmt.Sprintf("count by (%s) (%s)", m[2], fill.Replace(m[1])))
	}
	return exprs, nil
}

// alertExprs are the expressions of the alert rules, by alert.
func alertExprs(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	exprs := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			exprs[r.Alert] = r.Expr
		}
	}
	if len(exprs) == 0 {
		return nil, fmt.Errorf("%s: no alert rules", file)
	}
	return exprs, nil
}

// selectors are what an expression reads of the module's metrics: each
// metric, and each metric with each label it matches on as
// metric{label!=""}, so that a label renamed has no series. (Its values
// are the unit tests' concern: a 504 cannot be made here.)
func selectors(expr string) []string {
	var sels []string
	for _, m := range regexp.MustCompile(`(caddy_queue_publish_[a-z_]+)(\{[^}]*\})?`).FindAllStringSubmatch(expr, -1) {
		sels = append(sels, m[1])
		for _, l := range regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)`).FindAllStringSubmatch(m[2], -1) {
			sels = append(sels, m[1]+`{`+l[1]+`!=""}`)
		}
	}
	slices.Sort(sels)
	return slices.Compact(sels)
}

// waitForScrape waits, for at most 30 s, until Prometheus has scraped
// Caddy after t.
func waitForScrape(t time.Time) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		last, err := scalar(`max(timestamp(up{job="caddy"} == 1))`)
		if err == nil && last > float64(t.Unix())+1 {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("no scrape of Caddy by Prometheus after %v", t)
}

// scalar is the value of a query of one series.
func scalar(q string) (float64, error) {
	result, err := ask(q)
	if err != nil || len(result) == 0 {
		return 0, fmt.Errorf("no value (%v)", err)
	}
	var v struct {
		Value [2]any `json:"value"`
	}
	if err := json.Unmarshal(result[0], &v); err != nil {
		return 0, err
	}
	s, _ := v.Value[1].(string)
	var f float64
	_, err = fmt.Sscan(s, &f)
	return f, err
}

// query runs an instant query and returns how many series it gave.
func query(q string) (int, error) {
	result, err := ask(q)
	return len(result), err
}

// ask runs an instant query and returns its series.
func ask(q string) ([]json.RawMessage, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Get(*prometheus + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var answer struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&answer); err != nil {
		return nil, err
	}
	if answer.Status != "success" {
		return nil, fmt.Errorf("%s", answer.Error)
	}
	return answer.Data.Result, nil
}
