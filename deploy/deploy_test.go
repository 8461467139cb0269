package deploy

// These tests validate the deployment files beside them:
//
//   - prometheus/alerts.yml and alerts_test.yml: `promtool check rules` and
//     `promtool test rules`, plus structure and metric names without promtool;
//   - grafana/tlsproxy.json: valid JSON, known metric names, and (with
//     promtool) PromQL that parses;
//   - systemd/tlsproxy.service: the hardening directives, `systemd-analyze
//     verify` and `systemd-analyze security --offline` on a copy whose
//     ExecStart is a freshly built tlsproxy;
//   - compose/compose.yaml and compose/config.yaml: Redis unpublished on an
//     internal network, admin port on loopback only, read-only mounts, paths
//     that agree with the config and the Dockerfile, and `tlsproxy check` on
//     the config.
//
// A missing promtool skips its checks, unless CI or REQUIRE_TEST_TOOLS is
// set: then it is a failure (`make deps` installs Debian's prometheus package,
// which has promtool). A missing systemd-analyze always skips.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// Paths relative to this package's directory (the tests' working directory).
const (
	alertsFile     = "prometheus/alerts.yml"
	alertsTestFile = "prometheus/alerts_test.yml"
	dashboardFile  = "grafana/tlsproxy.json"
	unitFile       = "systemd/tlsproxy.service"
	composeFile    = "compose/compose.yaml"
	composeConfig  = "compose/config.yaml"
	dockerfile     = "../Dockerfile"
	mainPackage    = "../cmd/tlsproxy"
)

// metricKinds lists every metric tlsproxy exposes on /metrics.
var metricKinds = map[string]string{
	"tlsproxy_build_info":                                     "gauge",
	"tlsproxy_client_connections":                             "gauge",
	"tlsproxy_client_connections_limit":                       "gauge",
	"tlsproxy_client_connections_total":                       "counter",
	"tlsproxy_handshake_failures_total":                       "counter",
	"tlsproxy_handshake_duration_seconds":                     "histogram",
	"tlsproxy_commands_total":                                 "counter",
	"tlsproxy_command_errors_total":                           "counter",
	"tlsproxy_batch_duration_seconds":                         "histogram",
	"tlsproxy_upstream_connections":                           "gauge",
	"tlsproxy_upstream_dials_total":                           "counter",
	"tlsproxy_upstream_up":                                    "gauge",
	"tlsproxy_pinned_sessions":                                "gauge",
	"tlsproxy_bytes_total":                                    "counter",
	"tlsproxy_client_disconnects_total":                       "counter",
	"tlsproxy_replication_streams_total":                      "counter",
	"tlsproxy_config_reloads_total":                           "counter",
	"tlsproxy_config_last_reload_success_timestamp_seconds":   "gauge",
	"tlsproxy_certificate_not_after_timestamp_seconds":        "gauge",
	"tlsproxy_client_certificate_not_after_timestamp_seconds": "gauge",
	"tlsproxy_certificate_expiring":                           "gauge",
}

var metricToken = regexp.MustCompile(`tlsproxy_[a-z_]+`)

// knownMetric reports whether name is an exposed metric or a histogram's
// _bucket, _sum or _count series.
func knownMetric(name string) bool {
	if _, ok := metricKinds[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && metricKinds[base] == "histogram" {
			return true
		}
	}
	return false
}

// checkMetricNames fails t for every tlsproxy_* token in text that names no
// known metric, and returns the tokens it found.
func checkMetricNames(t *testing.T, where, text string) []string {
	t.Helper()
	tokens := metricToken.FindAllString(text, -1)
	for _, tok := range tokens {
		if !knownMetric(tok) {
			t.Errorf("%s: unknown metric %q (not in metricKinds, the metrics tlsproxy exposes)", where, tok)
		}
	}
	return tokens
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// requireTool returns the path of an external tool. When it is missing the
// test is skipped, or fails when CI or REQUIRE_TEST_TOOLS is set.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" || os.Getenv("REQUIRE_TEST_TOOLS") != "" {
		t.Fatalf("%s not found on PATH and CI or REQUIRE_TEST_TOOLS is set: install Debian's %s package (make deps does)", name, pkg)
	}
	t.Skipf("%s not found on PATH: install Debian's %s package (make deps does) to run this check", name, pkg)
	return ""
}

// run runs a command with a timeout and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s timed out after 5 minutes", name)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(readFile(t, path), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The tlsproxy binary, built once for the tests that need it.
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tlsproxyBinary builds ../cmd/tlsproxy (once) and returns its path.
func tlsproxyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tlsproxy-deploy-test-")
		if buildErr != nil {
			return
		}
		goTool, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(buildDir, "tlsproxy")
		out, err := run(t, goTool, "build", "-o", buildBin, mainPackage)
		if err != nil {
			buildErr = fmt.Errorf("go build %s: %v\n%s", mainPackage, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// ---- Prometheus -------------------------------------------------------------

// alertRules is the part of a Prometheus rule file these tests read.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleTests is the part of a promtool unit-test file these tests read.
type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name        string `yaml:"name"`
		InputSeries []struct {
			Series string `yaml:"series"`
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// wantAlerts are the alerts alerts.yml must define, with their severity and "for:".
var wantAlerts = map[string]struct{ severity, forDuration string }{
	"TlsproxyDown":                          {"critical", "1m"},
	"TlsproxyUpstreamDown":                  {"critical", "1m"},
	"TlsproxyHandshakeFailureRate":          {"warning", "10m"},
	"TlsproxyClientsNearLimit":              {"warning", "5m"},
	"TlsproxyCertificateRotationDue":        {"warning", "1h"},
	"TlsproxyCertificateExpiringCritical":   {"critical", "10m"},
	"TlsproxyCertificateExpired":            {"critical", "1m"},
	"TlsproxyClientCertificateExpiringSoon": {"warning", "1h"},
	"TlsproxyReloadFailing":                 {"warning", "0m"},
}

// TestPromtool runs `promtool check rules` on alerts.yml and `promtool test
// rules` on alerts_test.yml.
func TestPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", alertsFile},
		{"test", "rules", alertsTestFile},
	} {
		out, err := run(t, promtool, args...)
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		if err != nil {
			t.Errorf("promtool %s: %v (output above)", strings.Join(args, " "), err)
		}
	}
}

// TestAlertRules checks alerts.yml without promtool: the expected alerts, each
// with "for:", a severity and summary/description annotations, and only known
// metric names.
func TestAlertRules(t *testing.T) {
	var rules alertRules
	readYAML(t, alertsFile, &rules)
	if len(rules.Groups) != 1 || rules.Groups[0].Name != "tlsproxy" {
		t.Fatalf("%s: want exactly one group named tlsproxy, got %d group(s)", alertsFile, len(rules.Groups))
	}
	seen := map[string]bool{}
	for _, r := range rules.Groups[0].Rules {
		if r.Alert == "" {
			t.Errorf("%s: rule %q is not an alert", alertsFile, r.Record)
			continue
		}
		seen[r.Alert] = true
		want, ok := wantAlerts[r.Alert]
		if !ok {
			t.Errorf("%s: unexpected alert %s (add it to wantAlerts and alerts_test.yml)", alertsFile, r.Alert)
			continue
		}
		if r.For != want.forDuration {
			t.Errorf("%s: %s: for: %q, want %q", alertsFile, r.Alert, r.For, want.forDuration)
		}
		if r.Labels["severity"] != want.severity {
			t.Errorf("%s: %s: severity %q, want %q", alertsFile, r.Alert, r.Labels["severity"], want.severity)
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: %s: no %s annotation", alertsFile, r.Alert, a)
			}
		}
		where := alertsFile + ": " + r.Alert
		if r.Alert != "TlsproxyDown" && len(checkMetricNames(t, where+" expr", r.Expr)) == 0 {
			t.Errorf("%s: expr names no tlsproxy metric: %s", where, r.Expr)
		}
		for name, text := range r.Annotations {
			checkMetricNames(t, where+" annotation "+name, text)
		}
	}
	for _, name := range sortedKeys(wantAlerts) {
		if !seen[name] {
			t.Errorf("%s: alert %s is missing", alertsFile, name)
		}
	}
}

// TestAlertRuleTests checks alerts_test.yml without promtool: it loads
// alerts.yml, tests every alert both firing and not firing, and its input
// series are named like real metrics (a typo would test nothing).
func TestAlertRuleTests(t *testing.T) {
	var tests ruleTests
	readYAML(t, alertsTestFile, &tests)
	if !slices.Contains(tests.RuleFiles, filepath.Base(alertsFile)) {
		t.Errorf("%s: rule_files %v does not load %s", alertsTestFile, tests.RuleFiles, filepath.Base(alertsFile))
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, s := range tc.InputSeries {
			name, _, _ := strings.Cut(s.Series, "{")
			name = strings.TrimSpace(name)
			if name != "up" && !knownMetric(name) {
				t.Errorf("%s: test %q: input series %q is not a tlsproxy metric", alertsTestFile, tc.Name, s.Series)
			}
		}
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, name := range sortedKeys(wantAlerts) {
		if !fires[name] {
			t.Errorf("%s: no test where %s fires", alertsTestFile, name)
		}
		if !quiet[name] {
			t.Errorf("%s: no test where %s stays quiet", alertsTestFile, name)
		}
	}
}

// ---- Grafana ----------------------------------------------------------------

// collectExprs walks decoded JSON and returns every PromQL string: the "expr"
// of targets and the query of query variables (a string or {"query": ...}).
func collectExprs(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			switch {
			case k == "expr":
				if s, ok := child.(string); ok {
					*out = append(*out, s)
				}
			case k == "query" && v["type"] == "query":
				switch q := child.(type) {
				case string:
					*out = append(*out, q)
				case map[string]any:
					if s, ok := q["query"].(string); ok {
						*out = append(*out, s)
					}
				}
			default:
				collectExprs(child, out)
			}
		}
	case []any:
		for _, child := range v {
			collectExprs(child, out)
		}
	}
}

// dashboardPanel is the part of a Grafana panel these tests read.
type dashboardPanel struct {
	ID         int              `json:"id"`
	Type       string           `json:"type"`
	Title      string           `json:"title"`
	Datasource map[string]any   `json:"datasource"`
	GridPos    map[string]int   `json:"gridPos"`
	Panels     []dashboardPanel `json:"panels"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// TestGrafanaDashboard checks that the dashboard is valid JSON, that its
// panels are well formed and use the datasource variable, that every
// PromQL expression names only known metrics, that the wanted metrics are all
// shown, and (with promtool) that every expression parses.
func TestGrafanaDashboard(t *testing.T) {
	data := readFile(t, dashboardFile)
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("%s: invalid JSON: %v", dashboardFile, err)
	}
	var dash struct {
		Title         string           `json:"title"`
		UID           string           `json:"uid"`
		SchemaVersion int              `json:"schemaVersion"`
		Panels        []dashboardPanel `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("%s: title %q, uid %q: both must be set", dashboardFile, dash.Title, dash.UID)
	}
	if dash.SchemaVersion < 36 {
		t.Errorf("%s: schemaVersion %d, want >= 36", dashboardFile, dash.SchemaVersion)
	}

	// The datasource is a variable ("${datasource}" of a datasource-type
	// variable) or an import input ("${DS_...}").
	dsRefs := map[string]bool{}
	for _, v := range dash.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsRefs["${"+v.Name+"}"] = true
		}
	}
	if inputs, ok := raw["__inputs"].([]any); ok {
		for _, in := range inputs {
			if m, ok := in.(map[string]any); ok && m["pluginId"] == "prometheus" {
				dsRefs[fmt.Sprintf("${%v}", m["name"])] = true
			}
		}
	}
	if len(dsRefs) == 0 {
		t.Fatalf("%s: no Prometheus datasource variable or __inputs entry", dashboardFile)
	}

	ids := map[int]string{}
	var walk func([]dashboardPanel)
	walk = func(panels []dashboardPanel) {
		for _, p := range panels {
			if prev, dup := ids[p.ID]; dup || p.ID == 0 {
				t.Errorf("%s: panel %q: id %d is zero or also used by %q", dashboardFile, p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			if p.Title == "" || len(p.GridPos) == 0 {
				t.Errorf("%s: panel id %d: needs a title and a gridPos", dashboardFile, p.ID)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if uid, _ := p.Datasource["uid"].(string); !dsRefs[uid] {
				t.Errorf("%s: panel %q: datasource uid %q, want one of %v", dashboardFile, p.Title, uid, sortedKeys(dsRefs))
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no targets", dashboardFile, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.RefID == "" || tg.Expr == "" {
					t.Errorf("%s: panel %q: a target lacks refId or expr", dashboardFile, p.Title)
				}
			}
		}
	}
	walk(dash.Panels)

	var exprs []string
	collectExprs(raw, &exprs)
	if len(exprs) == 0 {
		t.Fatalf("%s: no PromQL expressions found", dashboardFile)
	}
	used := map[string]bool{}
	for _, e := range exprs {
		tokens := checkMetricNames(t, dashboardFile+" expr", e)
		if len(tokens) == 0 {
			t.Errorf("%s: expression names no tlsproxy metric: %s", dashboardFile, e)
		}
		for _, tok := range tokens {
			used[tok] = true
		}
	}
	// Descriptions and titles name metrics too: they must not be stale.
	checkMetricNames(t, dashboardFile, string(data))

	for _, m := range []string{
		"tlsproxy_client_connections", "tlsproxy_client_connections_limit",
		"tlsproxy_commands_total", "tlsproxy_command_errors_total",
		"tlsproxy_batch_duration_seconds_bucket", "tlsproxy_handshake_failures_total",
		"tlsproxy_handshake_duration_seconds_bucket", "tlsproxy_upstream_up",
		"tlsproxy_upstream_connections", "tlsproxy_pinned_sessions",
		"tlsproxy_bytes_total", "tlsproxy_upstream_dials_total",
	} {
		if !used[m] {
			t.Errorf("%s: no panel queries %s", dashboardFile, m)
		}
	}

	t.Run("promql-parses", func(t *testing.T) {
		promtool := requireTool(t, "promtool", "prometheus")
		// Grafana's variables, replaced by values Prometheus accepts; each
		// expression becomes a recording rule for `promtool check rules`.
		vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*")
		var rules strings.Builder
		rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		for i, e := range exprs {
			if strings.HasPrefix(e, "label_values(") {
				// label_values(metric{...}, label): check the selector.
				e = strings.TrimPrefix(e, "label_values(")
				e = e[:strings.LastIndex(e, ",")]
			}
			quoted, err := json.Marshal(vars.Replace(e)) // a JSON string is a YAML string
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&rules, "      - record: dashboard:expr_%d\n        expr: %s\n", i, quoted)
		}
		path := filepath.Join(t.TempDir(), "dashboard_rules.yml")
		if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := run(t, promtool, "check", "rules", path)
		t.Logf("promtool check rules (%d dashboard expressions):\n%s", len(exprs), out)
		if err != nil {
			t.Errorf("dashboard PromQL does not parse: %v (output above)", err)
		}
	})
}

// ---- systemd ----------------------------------------------------------------

// unitDirectives parses a unit file into section -> key -> values (in order),
// skipping comments and blank lines.
func unitDirectives(t *testing.T, data []byte) map[string]map[string][]string {
	t.Helper()
	sections := map[string]map[string][]string{}
	section := ""
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			sections[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", unitFile, i+1, line)
			}
			sections[section][key] = append(sections[section][key], value)
		}
	}
	return sections
}

// TestSystemdUnitDirectives checks the unit's lifecycle and hardening settings.
func TestSystemdUnitDirectives(t *testing.T) {
	units := unitDirectives(t, readFile(t, unitFile))
	service := units["Service"]
	want := map[string]string{
		"Type":                    "notify",
		"NotifyAccess":            "main",
		"ExecStart":               "/usr/local/bin/tlsproxy run --config /etc/tlsproxy/config.yaml",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"Restart":                 "on-failure",
		"RestartSec":              "2s",
		"TimeoutStopSec":          "30s",
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"ProtectClock":            "yes",
		"ProtectHostname":         "yes",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"SystemCallArchitectures": "native",
		"SystemCallFilter":        "@system-service",
		"UMask":                   "0077",
		"LimitNOFILE":             "65536",
		"ConfigurationDirectory":  "tlsproxy",
	}
	for _, key := range sortedKeys(want) {
		got, ok := service[key]
		if !ok {
			t.Errorf("%s: [Service] %s= is missing (want %q)", unitFile, key, want[key])
			continue
		}
		if len(got) != 1 || got[0] != want[key] {
			t.Errorf("%s: [Service] %s=%q, want exactly %q", unitFile, key, got, want[key])
		}
	}
	if got := units["Install"]["WantedBy"]; !slices.Equal(got, []string{"multi-user.target"}) {
		t.Errorf("%s: [Install] WantedBy=%q, want multi-user.target", unitFile, got)
	}
}

// TestSystemdAnalyze runs `systemd-analyze verify` and `systemd-analyze
// security --offline` on a copy of the unit whose ExecStart is a freshly built
// tlsproxy (verify rejects a missing executable). verify exits 0 even for
// unknown keys and unparsable values, printing "…tlsproxy.service:LINE: …,
// ignoring", so any output line that names the unit is a failure too.
func TestSystemdAnalyze(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found on PATH")
	}
	bin := tlsproxyBinary(t)

	const execStart = "ExecStart=/usr/local/bin/tlsproxy "
	data := string(readFile(t, unitFile))
	if strings.Count(data, "\n"+execStart) != 1 {
		t.Fatalf("%s: want exactly one line starting %q", unitFile, execStart)
	}
	data = strings.Replace(data, "\n"+execStart, "\nExecStart="+bin+" ", 1)
	unit := filepath.Join(t.TempDir(), filepath.Base(unitFile))
	if err := os.WriteFile(unit, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("verify", func(t *testing.T) {
		out, err := run(t, analyze, "verify", unit)
		t.Logf("systemd-analyze verify (exit %v):\n%s", err, out)
		if err != nil {
			t.Errorf("systemd-analyze verify %s: %v (output above)", unitFile, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, filepath.Base(unitFile)) {
				t.Errorf("systemd-analyze verify complains about the unit: %s", line)
			}
		}
	})

	t.Run("security", func(t *testing.T) {
		// Exposure scores run 0.0 (best) to 10.0; --threshold takes them
		// times 10. The unit scores 1.6 with systemd 252; 2.5 leaves room
		// for other versions' weights and still fails if a directive goes.
		out, err := run(t, analyze, "security", "--offline=yes", "--threshold=25", unit)
		if err != nil && (strings.Contains(out, "unrecognized option") || strings.Contains(out, "Unknown option")) {
			t.Skipf("this systemd-analyze has no --offline/--threshold (systemd < 250):\n%s", out)
		}
		overall := ""
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "Overall exposure level") {
				overall = strings.TrimSpace(line)
			}
		}
		t.Logf("systemd-analyze security --offline: %s", overall)
		if err != nil {
			t.Errorf("systemd-analyze security --offline=yes --threshold=25: %v\n%s", err, out)
		}
	})
}

// ---- Docker Compose ---------------------------------------------------------

type composeService struct {
	Image       string         `yaml:"image"`
	Build       map[string]any `yaml:"build"`
	Command     []string       `yaml:"command"`
	Ports       []any          `yaml:"ports"`
	Expose      []any          `yaml:"expose"`
	NetworkMode string         `yaml:"network_mode"`
	Networks    []string       `yaml:"networks"`
	Volumes     []any          `yaml:"volumes"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

type composeFileT struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
	} `yaml:"networks"`
}

// portMapping is one published port.
type portMapping struct{ hostIP, hostPort, containerPort string }

// parsePort reads a short ("[[IP:]HOST:]CONTAINER[/PROTO]") or long
// ({target, published, host_ip}) port entry.
func parsePort(t *testing.T, p any) portMapping {
	t.Helper()
	switch p := p.(type) {
	case string:
		s, _, _ := strings.Cut(p, "/")
		i := strings.LastIndex(s, ":")
		if i < 0 {
			return portMapping{containerPort: s}
		}
		m := portMapping{containerPort: s[i+1:]}
		s = s[:i]
		if j := strings.LastIndex(s, ":"); j >= 0 {
			m.hostIP, m.hostPort = strings.Trim(s[:j], "[]"), s[j+1:]
		} else {
			m.hostPort = s
		}
		return m
	case int:
		return portMapping{containerPort: fmt.Sprint(p)}
	case map[string]any:
		return portMapping{hostIP: fmt.Sprint(p["host_ip"]), hostPort: fmt.Sprint(p["published"]), containerPort: fmt.Sprint(p["target"])}
	}
	t.Fatalf("%s: cannot read port entry %#v", composeFile, p)
	return portMapping{}
}

// volumeMount is one mount of a service.
type volumeMount struct {
	source, target string
	readOnly       bool
}

// parseVolume reads a short ("SRC:DST[:OPTS]") or long volume entry.
func parseVolume(t *testing.T, v any) volumeMount {
	t.Helper()
	switch v := v.(type) {
	case string:
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			t.Fatalf("%s: volume %q has no target", composeFile, v)
		}
		m := volumeMount{source: parts[0], target: parts[1]}
		if len(parts) > 2 {
			m.readOnly = slices.Contains(strings.Split(parts[2], ","), "ro")
		}
		return m
	case map[string]any:
		ro, _ := v["read_only"].(bool)
		return volumeMount{source: fmt.Sprint(v["source"]), target: fmt.Sprint(v["target"]), readOnly: ro}
	}
	t.Fatalf("%s: cannot read volume entry %#v", composeFile, v)
	return volumeMount{}
}

// imageBinary returns the binary of the Dockerfile's last ENTRYPOINT.
func imageBinary(t *testing.T) string {
	t.Helper()
	var entry []string
	for _, line := range strings.Split(string(readFile(t, dockerfile)), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ENTRYPOINT "); ok {
			entry = nil
			if err := json.Unmarshal([]byte(rest), &entry); err != nil || len(entry) == 0 {
				t.Fatalf("%s: ENTRYPOINT %s is not a JSON array: %v", dockerfile, rest, err)
			}
		}
	}
	if entry == nil {
		t.Fatalf("%s: no ENTRYPOINT", dockerfile)
	}
	return entry[0]
}

// proxyConfig is the part of tlsproxy's config that compose.yaml must agree with.
type proxyConfig struct {
	Listen struct {
		Address string `yaml:"address"`
		TLS     struct {
			CertFile     string `yaml:"cert_file"`
			KeyFile      string `yaml:"key_file"`
			ClientCAFile string `yaml:"client_ca_file"`
		} `yaml:"tls"`
	} `yaml:"listen"`
	Upstream struct {
		URL string `yaml:"url"`
	} `yaml:"upstream"`
	Admin struct {
		Address string `yaml:"address"`
	} `yaml:"admin"`
}

// TestCompose checks compose.yaml and the proxy config it mounts.
func TestCompose(t *testing.T) {
	var c composeFileT
	readYAML(t, composeFile, &c)
	var cfg proxyConfig
	readYAML(t, composeConfig, &cfg)

	redis, ok := c.Services["redis"]
	if !ok {
		t.Fatalf("%s: no redis service", composeFile)
	}
	proxy, ok := c.Services["tlsproxy"]
	if !ok {
		t.Fatalf("%s: no tlsproxy service", composeFile)
	}

	// Redis: unpublished, on internal networks only.
	if redis.Image != "redis:7.0" {
		t.Errorf("redis: image %q, want redis:7.0", redis.Image)
	}
	if len(redis.Ports) != 0 {
		t.Errorf("redis: publishes ports %v; it must be reachable only through tlsproxy", redis.Ports)
	}
	if redis.NetworkMode != "" {
		t.Errorf("redis: network_mode %q; it must stay on the internal network", redis.NetworkMode)
	}
	if len(redis.Networks) == 0 {
		t.Errorf("redis: no networks: it would join the (non-internal) default network")
	}
	for _, n := range redis.Networks {
		if !c.Networks[n].Internal {
			t.Errorf("redis: network %q is not internal: true", n)
		}
		if !slices.Contains(proxy.Networks, n) {
			t.Errorf("tlsproxy: not on redis's network %q", n)
		}
	}
	cmd := strings.Join(redis.Command, " ")
	for _, want := range []string{"--bind 0.0.0.0", "--protected-mode no"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("redis: command %q lacks %q", cmd, want)
		}
	}

	// tlsproxy: built from the repository, on a non-internal network too.
	if ctx, _ := proxy.Build["context"].(string); ctx != "../.." {
		t.Errorf("tlsproxy: build context %q, want ../..", ctx)
	} else if _, err := os.Stat(filepath.Join(filepath.Dir(composeFile), ctx, "Dockerfile")); err != nil {
		t.Errorf("tlsproxy: build context has no Dockerfile: %v", err)
	}
	external := false
	for _, n := range proxy.Networks {
		if _, ok := c.Networks[n]; !ok {
			t.Errorf("tlsproxy: network %q is not declared", n)
		}
		external = external || !c.Networks[n].Internal
	}
	if !external {
		t.Errorf("tlsproxy: needs a non-internal network for its published ports")
	}

	// Ports: the client port, and the admin port on loopback only.
	_, clientPort, _ := strings.Cut(cfg.Listen.Address, ":")
	_, adminPort, _ := strings.Cut(cfg.Admin.Address, ":")
	published := map[string]portMapping{}
	for _, p := range proxy.Ports {
		m := parsePort(t, p)
		published[m.containerPort] = m
		switch m.containerPort {
		case clientPort:
		case adminPort:
			if m.hostIP != "127.0.0.1" {
				t.Errorf("tlsproxy: admin port %v is published on %q, want 127.0.0.1 only", p, m.hostIP)
			}
		default:
			t.Errorf("tlsproxy: publishes unexpected port %v", p)
		}
	}
	if m := published[clientPort]; m.hostPort != "6380" {
		t.Errorf("tlsproxy: client port %s published as %+v, want host port 6380", clientPort, m)
	}
	if m := published[adminPort]; m.hostPort != "9180" {
		t.Errorf("tlsproxy: admin port %s published as %+v, want 127.0.0.1:9180", adminPort, m)
	}

	// Mounts: read-only, certificates one by one (never a key other than
	// server.key), and at the paths the config names.
	mounts := map[string]volumeMount{}
	for _, v := range proxy.Volumes {
		m := parseVolume(t, v)
		mounts[m.target] = m
		if !m.readOnly {
			t.Errorf("tlsproxy: mount %s -> %s is not read-only", m.source, m.target)
		}
		if strings.Contains(m.source, "certs") {
			if base := filepath.Base(m.source); !slices.Contains([]string{"ca.crt", "server.crt", "server.key"}, base) {
				t.Errorf("tlsproxy: mounts %s: mount only ca.crt, server.crt and server.key", m.source)
			}
			if filepath.Dir(m.source) != "../../certs/dev" {
				t.Errorf("tlsproxy: certificate %s is not from ../../certs/dev", m.source)
			}
		}
	}
	for _, path := range []string{cfg.Listen.TLS.CertFile, cfg.Listen.TLS.KeyFile, cfg.Listen.TLS.ClientCAFile} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("tlsproxy: config file names %q, which no volume mounts", path)
		} else if filepath.Base(m.source) != filepath.Base(path) {
			t.Errorf("tlsproxy: %s is mounted from %s", path, m.source)
		}
	}

	// Health check: the image's own binary (distroless: no shell), with the
	// mounted config.
	hc := proxy.Healthcheck.Test
	bin := imageBinary(t)
	if len(hc) < 5 || hc[0] != "CMD" || hc[1] != bin || hc[2] != "health" || hc[3] != "--config" {
		t.Errorf("tlsproxy: healthcheck %q, want [CMD %s health --config FILE]", hc, bin)
	} else if m, ok := mounts[hc[4]]; !ok || filepath.Clean(filepath.Join(filepath.Dir(composeFile), m.source)) != filepath.Clean(composeConfig) {
		t.Errorf("tlsproxy: healthcheck config %s is not %s mounted", hc[4], composeConfig)
	}

	// The config itself.
	for _, kv := range []struct{ name, got, want string }{
		{"listen.address", cfg.Listen.Address, "0.0.0.0:6380"},
		{"admin.address", cfg.Admin.Address, "0.0.0.0:9180"},
		{"upstream.url", cfg.Upstream.URL, "redis://redis:6379"},
	} {
		if kv.got != kv.want {
			t.Errorf("%s: %s is %q, want %q", composeConfig, kv.name, kv.got, kv.want)
		}
	}
}

// TestComposeConfigChecks runs `tlsproxy check` on compose/config.yaml, with
// its certificate paths pointed at freshly generated dev certificates.
func TestComposeConfigChecks(t *testing.T) {
	bin := tlsproxyBinary(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if out, err := run(t, bin, "certs", "dev", "--out", certs); err != nil {
		t.Fatalf("tlsproxy certs dev: %v\n%s", err, out)
	}
	data := strings.ReplaceAll(string(readFile(t, composeConfig)), "/etc/tlsproxy/certs/", certs+"/")
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	// --offline: the compose network's redis host does not exist here.
	out, err := run(t, bin, "check", "--config", config, "--offline")
	t.Logf("tlsproxy check --config %s --offline (certificate paths rewritten):\n%s", composeConfig, out)
	// The config loads; the checklist's one FAIL is the plain link across
	// the compose network to Redis, which compose/README.md explains.
	var fails []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "FAIL") {
			fails = append(fails, line)
		}
	}
	if err == nil || len(fails) != 1 || !strings.Contains(fails[0], "upstream link") || !strings.Contains(out, "configuration loads") {
		t.Errorf("tlsproxy check --config %s: %v; want the config to load and only the upstream link to FAIL (output above)", composeConfig, err)
	}
}
