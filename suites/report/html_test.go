package report

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

func renderSample(t *testing.T) (sample, []byte) {
	t.Helper()
	s := buildSample(t)
	var buf bytes.Buffer
	if err := WriteHTML(&buf, s.report); err != nil {
		t.Fatal(err)
	}
	return s, buf.Bytes()
}

// walk calls f on every element node.
func walk(n *html.Node, f func(*html.Node)) {
	if n.Type == html.ElementNode {
		f(n)
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		walk(c, f)
	}
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func TestHTMLIsSelfContainedAndComplete(t *testing.T) {
	s, page := renderSample(t)
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	var mismatchCells, cells, flows int
	walk(doc, func(n *html.Node) {
		switch n.Data {
		case "script", "link", "img", "iframe", "object":
			t.Errorf("page has a <%s>: it must be self-contained", n.Data)
		case "td":
			cells++
			if strings.Contains(attr(n, "class"), "mismatch") {
				mismatchCells++
				if !strings.Contains(n.FirstChild.Data, MarkMismatch) {
					t.Errorf("mismatch cell without %q mark: %q", MarkMismatch, n.FirstChild.Data)
				}
			}
		case "pre":
			if attr(n, "class") == "flows" {
				flows++
			}
		}
		for _, a := range n.Attr {
			if (a.Key == "src" || a.Key == "href") && !strings.HasPrefix(a.Val, "#") {
				t.Errorf("<%s %s=%q> points outside the page", n.Data, a.Key, a.Val)
			}
		}
	})
	if mismatchCells != s.mismatches {
		t.Errorf("%d cells marked mismatched, %d mismatches made", mismatchCells, s.mismatches)
	}
	if flows != s.mismatches {
		t.Errorf("%d flow blocks, one per mismatch (%d) expected", flows, s.mismatches)
	}
	text := string(page)
	for _, want := range []string{"1 passed", "1 failed", "1 errors", "1 skipped", "no SCTP in this kernel", "FORWARDED (no policy verdict)",
		"random seed 20261126", "kind: NetworkPolicy", "1.5s"} {
		if !strings.Contains(text, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestHTMLRendersInChromium opens the page in headless Chromium and looks at
// the screenshot: the grids' colours must be on screen, the mismatch outline
// included.
func TestHTMLRendersInChromium(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("chromium is not installed, so the HTML report's rendering is not checked: apt-get install -y chromium")
	}
	_, page := renderSample(t)
	dir := t.TempDir()
	if keep := os.Getenv("FLATNET_REPORT_ARTIFACTS"); keep != "" {
		dir = keep
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	htmlPath := filepath.Join(dir, "report.html")
	pngPath := filepath.Join(dir, "report.png")
	if err := os.WriteFile(htmlPath, page, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+filepath.Join(t.TempDir(), "profile"),
		"--window-size=1400,1800", "--screenshot="+pngPath, "file://"+htmlPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatalf("no screenshot: %v\n%s", err, out)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1400 || b.Dy() != 1800 {
		t.Errorf("screenshot is %v, want 1400x1800", b)
	}
	counts := countColours(img, map[string]color.RGBA{
		"reachable": {0x2e, 0x9e, 0x4f, 0xff},
		"blocked":   {0xc8, 0x32, 0x3c, 0xff},
		"mismatch":  {0xf5, 0xb8, 0x00, 0xff},
	})
	// Cells are about 29x21 px: demand at least a few cells' worth of each.
	for name, n := range counts {
		if n < 2000 {
			t.Errorf("%s colour covers %d pixels; the grids did not render (screenshot %s)", name, n, pngPath)
		}
	}
	t.Logf("screenshot %s: colour pixels %v", pngPath, counts)
}

func countColours(img image.Image, want map[string]color.RGBA) map[string]int {
	counts := map[string]int{}
	for name := range want {
		counts[name] = 0
	}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			for name, c := range want {
				if near(r>>8, c.R) && near(g>>8, c.G) && near(bl>>8, c.B) {
					counts[name]++
				}
			}
		}
	}
	return counts
}

func near(v uint32, c uint8) bool {
	d := int(v) - int(c)
	return d >= -6 && d <= 6
}

// TestHTMLListsWhatWasNotRun: every skipped case is listed at the top with
// its reason, linked to its own section.
func TestHTMLListsWhatWasNotRun(t *testing.T) {
	_, page := renderSample(t)
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var rows [][]string // link target, reason
	walk(doc, func(n *html.Node) {
		if id := attr(n, "id"); id != "" {
			ids[id] = true
		}
		if n.Data != "table" || attr(n, "class") != "notrun" {
			return
		}
		walk(n, func(tr *html.Node) {
			if tr.Data != "tr" {
				return
			}
			var href, reason string
			col := 0
			for td := tr.FirstChild; td != nil; td = td.NextSibling {
				if td.Type != html.ElementNode || td.Data != "td" {
					continue
				}
				col++
				walk(td, func(a *html.Node) {
					if a.Data == "a" {
						href = attr(a, "href")
					}
				})
				if col == 2 && td.FirstChild != nil {
					reason = td.FirstChild.Data
				}
			}
			if col > 0 {
				rows = append(rows, []string{href, reason})
			}
		})
	})
	if len(rows) != 1 {
		t.Fatalf("not-run rows %q, want the one skipped case", rows)
	}
	if rows[0][0] != "#case-np-sctp" || !ids["case-np-sctp"] {
		t.Errorf("not-run row links to %q; the case's section must exist (ids %v)", rows[0][0], ids)
	}
	if !strings.Contains(rows[0][1], "no SCTP in this kernel") {
		t.Errorf("not-run row says %q, want the case's reason", rows[0][1])
	}
}
