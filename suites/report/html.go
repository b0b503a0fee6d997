package report

import (
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"github.com/flatnet/flatnet/suites/reachability"
)

// WriteHTML writes the report as one self-contained HTML page: inline CSS, no
// script, no external resource, so it can be archived as a CI artifact and
// opened anywhere. Each comparison is drawn as coloured grids (green
// reachable, red blocked, a thick outline and '!' where observed differs from
// expected), followed by the mismatches with the oracle's reason, the
// policies involved and the flow lines the caller attached.
func WriteHTML(w io.Writer, r *Report) error {
	if err := pageTemplate.Execute(w, newPage(r)); err != nil {
		return fmt.Errorf("write HTML report: %w", err)
	}
	return nil
}

// The page's view model: everything computed here so the template only lays
// it out.
type page struct {
	Title                          string
	Started                        string
	Notes                          []string
	Total, Passed, Failed, Skipped int
	Errors                         int
	Duration                       string
	Cases                          []pageCase
	// NotRun are the skipped cases again, listed at the top with why: what
	// a run did not check must be as visible as what failed.
	NotRun []pageCase
	// Families is the pass-rate table, one line per family and "all".
	Families []FamilyRate
}

type pageCase struct {
	Name, Family, Description string
	Status                    string // passed, failed, skipped, error
	Message                   string
	Duration                  string
	Steps                     []pageStep
}

type pageStep struct {
	Name, Duration string
	Policies       []string
	Manifest       string
	Comparisons    []pageComparison
}

type pageComparison struct {
	Summary    string
	OK         bool
	Grids      []pageGrid
	Mismatches []reachability.Mismatch
	Missing    []reachability.Key
	// WrongReason: answers as expected whose flows do not prove them.
	WrongReason []reachability.Mismatch
}

type pageGrid struct {
	Port string
	To   []string
	Rows []pageRow
}

type pageRow struct {
	From  string
	Cells []pageCell
}

type pageCell struct {
	Mark, Class, Title string
}

func newPage(r *Report) page {
	p := page{Title: r.Title, Notes: r.Notes, Total: len(r.Cases), Families: FamilyRates(r.Cases)}
	if !r.Started.IsZero() {
		p.Started = r.Started.UTC().Format(time.RFC3339)
	}
	var total time.Duration
	for _, c := range r.Cases {
		pc := pageCase{Name: c.Name, Family: c.Family, Description: c.Description, Duration: c.Duration().Round(time.Millisecond).String()}
		switch {
		case c.Skipped != "":
			pc.Status, pc.Message = "skipped", c.Skipped
			p.Skipped++
			p.NotRun = append(p.NotRun, pc)
		case c.Error != "":
			pc.Status, pc.Message = "error", c.Error
			p.Errors++
		case c.Failed():
			pc.Status, pc.Message = "failed", strings.Join(c.Problems, "\n")
			p.Failed++
		default:
			pc.Status = "passed"
			p.Passed++
		}
		for _, s := range c.Steps {
			ps := pageStep{Name: s.Name, Duration: s.Duration.Round(time.Millisecond).String(), Policies: s.Policies, Manifest: s.Manifest}
			for _, cmp := range s.Comparisons {
				ps.Comparisons = append(ps.Comparisons, newPageComparison(cmp))
			}
			pc.Steps = append(pc.Steps, ps)
		}
		total += c.Duration()
		p.Cases = append(p.Cases, pc)
	}
	p.Duration = total.Round(time.Millisecond).String()
	return p
}

func newPageComparison(c *reachability.Comparison) pageComparison {
	pc := pageComparison{Summary: c.Summary(), OK: c.OK(), Mismatches: c.Mismatches, Missing: c.Missing, WrongReason: c.WrongReason}
	for _, port := range c.Observed.Ports {
		g := pageGrid{Port: port.String(), To: c.Observed.To}
		for _, f := range c.Observed.From {
			row := pageRow{From: f}
			for _, to := range c.Observed.To {
				k := reachability.Key{From: f, To: to, PortProtocol: port}
				row.Cells = append(row.Cells, newPageCell(c, k))
			}
			g.Rows = append(g.Rows, row)
		}
		pc.Grids = append(pc.Grids, g)
	}
	return pc
}

func newPageCell(c *reachability.Comparison, k reachability.Key) pageCell {
	obs, okObs := c.Observed.Get(k)
	exp, okExp := c.Expected.Get(k)
	if !okObs {
		return pageCell{Mark: MarkUnknown, Class: "unknown", Title: k.String() + ": not probed"}
	}
	cell := pageCell{Mark: MarkBlocked, Class: "blocked"}
	if obs.Reachable {
		cell.Mark, cell.Class = MarkReachable, "reach"
	}
	cell.Title = fmt.Sprintf("%s: observed %s", k, reachWord(obs.Reachable))
	if obs.Detail != "" {
		cell.Title += " (" + obs.Detail + ")"
	}
	if okExp {
		cell.Title += "; expected " + exp.Detail
		if exp.Reachable != obs.Reachable {
			cell.Mark += MarkMismatch
			cell.Class += " mismatch"
		}
	}
	if m, wrong := c.Wrong(k); wrong {
		cell.Mark += MarkWrongReason
		cell.Class += " wrongreason"
		cell.Title += "; flows: " + m.Why
	}
	return cell
}

var pageTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #fff; }
h1 { margin: 0 0 .3em 0; font-size: 1.5em; }
.meta, .note { color: #555; margin: .1em 0; }
.summary span { display: inline-block; margin-right: 1em; padding: .2em .6em; border-radius: .3em; font-weight: 600; }
.s-passed { background: #d7f2dc; } .s-failed { background: #f8d3d3; } .s-skipped { background: #e8e8e8; } .s-error { background: #fbe3b8; }
details.case { border: 1px solid #c9ced8; border-radius: .4em; margin: .8em 0; padding: .4em .8em; }
details.case > summary { cursor: pointer; font-weight: 600; }
.badge { font-size: .8em; padding: .1em .5em; border-radius: .3em; margin-left: .5em; }
.family { color: #555; font-weight: 400; margin-left: .5em; }
.step { margin: .6em 0 .6em 1em; }
.step h3 { font-size: 1em; margin: .4em 0; }
.grids { display: flex; flex-wrap: wrap; gap: 1.2em; margin: .4em 0; }
table.grid { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 13px; }
table.grid caption { font-weight: 600; text-align: left; padding-bottom: .2em; }
table.grid th { padding: 2px 6px; font-weight: 500; background: #f1f3f7; border: 1px solid #d5d9e2; }
table.grid td { width: 2.2em; height: 1.6em; text-align: center; border: 1px solid #ffffff; font-weight: 700; }
td.reach { background: #2e9e4f; color: #fff; }
td.blocked { background: #c8323c; color: #fff; }
td.unknown { background: #9aa0aa; color: #fff; }
td.mismatch { outline: 3px solid #f5b800; outline-offset: -3px; }
td.wrongreason { outline: 3px dashed #7a3fb8; outline-offset: -3px; }
.legend span { display: inline-block; padding: 0 .5em; margin-right: .5em; color: #fff; font-family: monospace; }
ul.mismatches li { margin-bottom: .5em; }
pre { background: #f6f7f9; border: 1px solid #e1e4ea; padding: .5em; overflow-x: auto; font-size: 12px; }
details.notrun { background: #f4f4f4; border: 1px solid #d0d0d0; border-radius: .4em; margin: .8em 0; padding: .4em .8em; }
details.notrun > summary { cursor: pointer; font-weight: 600; }
table.notrun { border-collapse: collapse; margin-top: .4em; }
table.notrun th, table.notrun td { text-align: left; padding: 2px 8px; border-bottom: 1px solid #ddd; vertical-align: top; }
.ok { color: #1f7a3a; } .bad { color: #b3261e; font-weight: 600; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{if .Started}}<p class="meta">started {{.Started}}, cases took {{.Duration}} in all</p>{{end}}
{{range .Notes}}<p class="note">{{.}}</p>{{end}}
<p class="summary"><span>{{.Total}} cases</span><span class="s-passed">{{.Passed}} passed</span><span class="s-failed">{{.Failed}} failed</span><span class="s-error">{{.Errors}} errors</span><span class="s-skipped">{{.Skipped}} skipped</span></p>
{{if .Families}}
<table class="notrun families"><tr><th>family</th><th>cases</th><th>passed</th><th>failed</th><th>skipped</th><th>pass %</th></tr>
{{range .Families}}<tr><td>{{.Family}}</td><td>{{.Cases}}</td><td>{{.Passed}}</td><td>{{.Failed}}</td><td>{{.Skipped}}</td><td>{{.PassText}}</td></tr>
{{end}}</table>
{{end}}
{{if .NotRun}}
<details class="notrun" open><summary>not run ({{len .NotRun}}), and why</summary>
<table class="notrun"><tr><th>case</th><th>why it was not run</th></tr>
{{range .NotRun}}<tr><td><a href="#case-{{.Name}}">{{.Name}}</a></td><td>{{.Message}}</td></tr>
{{end}}</table>
</details>
{{end}}
<p class="legend"><span style="background:#2e9e4f">. reachable</span><span style="background:#c8323c">X blocked</span><span style="background:#9aa0aa">? not probed</span><span style="background:#fff;color:#1d2330;outline:3px solid #f5b800">! observed differs from expected</span><span style="background:#fff;color:#1d2330;outline:3px dashed #7a3fb8">~ as expected, not for the oracle's reason (flows)</span> rows: from, columns: to</p>
{{range .Cases}}
<details class="case" id="case-{{.Name}}"{{if ne .Status "passed"}} open{{end}}>
<summary>{{.Name}}<span class="badge s-{{.Status}}">{{.Status}}</span><span class="family">{{.Family}} · {{.Duration}}</span></summary>
{{if .Description}}<p>{{.Description}}</p>{{end}}
{{if .Message}}<p class="bad">{{.Message}}</p>{{end}}
{{range .Steps}}
<div class="step">
<h3>step: {{.Name}} <span class="family">{{.Duration}}</span></h3>
<p class="meta">policies: {{if .Policies}}{{range $i, $p := .Policies}}{{if $i}}, {{end}}{{$p}}{{end}}{{else}}none{{end}}</p>
{{if .Manifest}}<details><summary>manifest</summary><pre>{{.Manifest}}</pre></details>{{end}}
{{range .Comparisons}}
<p class="{{if .OK}}ok{{else}}bad{{end}}">{{.Summary}}</p>
<div class="grids">
{{range .Grids}}
<table class="grid">
<caption>{{.Port}}</caption>
<tr><th>from \ to</th>{{range .To}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr><th>{{.From}}</th>{{range .Cells}}<td class="{{.Class}}" title="{{.Title}}">{{.Mark}}</td>{{end}}</tr>
{{end}}</table>
{{end}}
</div>
{{if .Mismatches}}
<p class="bad">mismatches ({{len .Mismatches}}), with the oracle's reason, the policies involved and the flows recorded:</p>
<ul class="mismatches">
{{range .Mismatches}}<li><b>{{.Key}}</b>: expected {{if .Expected.Reachable}}reachable{{else}}blocked{{end}}, observed {{if .Observed.Reachable}}reachable{{else}}blocked{{end}}{{if .Observed.Detail}} ({{.Observed.Detail}}){{end}}<br>
oracle: {{.Expected.Detail}}<br>
policies: {{if .Expected.Policies}}{{range $i, $p := .Expected.Policies}}{{if $i}}, {{end}}{{$p}}{{end}}{{else}}none select either end{{end}}
{{if .Flows}}<pre class="flows">{{range .Flows}}{{.}}
{{end}}</pre>{{else}}<br><span class="meta">no flow lines recorded</span>{{end}}</li>
{{end}}</ul>
{{end}}
{{if .WrongReason}}
<p class="bad">for the wrong reason ({{len .WrongReason}}): the verdict is the oracle's, the datapath's flows do not prove it:</p>
<ul class="mismatches">
{{range .WrongReason}}<li><b>{{.Key}}</b>: observed {{if .Observed.Reachable}}reachable{{else}}blocked{{end}}{{if .Observed.Detail}} ({{.Observed.Detail}}){{end}}<br>
flows: {{.Why}}<br>
oracle: {{.Expected.Detail}}
<pre class="flows">{{range .Flows}}{{.}}
{{end}}</pre></li>
{{end}}</ul>
{{end}}
{{if .Missing}}<p class="bad">not probed:</p><ul>{{range .Missing}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{end}}
</div>
{{end}}
</details>
{{end}}
</body>
</html>
`))
