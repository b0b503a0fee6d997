package perf

import (
	"fmt"
	"io"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	probeperf "github.com/flatnet/flatnet/probes/perf"
)

// WritePNG draws one panel per test, two to a row: for each path a bar per
// policy count, the p50 latency of the RR tests and the Gbit/s of TCP_STREAM.
// A cell that failed or was not measured has no bar.
func (r *Report) WritePNG(w io.Writer) error {
	var tests []probeperf.Test
	var paths []Path
	var counts []int
	for _, c := range r.Cells {
		if !slices.Contains(tests, c.Test) {
			tests = append(tests, c.Test)
		}
		if !slices.Contains(paths, c.Path) {
			paths = append(paths, c.Path)
		}
		if !slices.Contains(counts, c.Policies) {
			counts = append(counts, c.Policies)
		}
	}
	if len(tests) == 0 {
		return fmt.Errorf("no cells to plot")
	}
	const cols = 2
	rows := (len(tests) + cols - 1) / cols
	plots := make([][]*plot.Plot, rows)
	for i := range plots {
		plots[i] = make([]*plot.Plot, cols)
	}
	for i, t := range tests {
		p, err := r.panel(t, paths, counts)
		if err != nil {
			return err
		}
		plots[i/cols][i%cols] = p
	}
	img := vgimg.New(vg.Points(float64(cols)*420), vg.Points(float64(rows)*300))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, tiles, dc)
	for j := range plots {
		for i, p := range plots[j] {
			if p != nil {
				p.Draw(canvases[j][i])
			}
		}
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("encoding the plot: %w", err)
	}
	return nil
}

func (r *Report) panel(t probeperf.Test, paths []Path, counts []int) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s p50 latency (µs), %s", t, r.Cluster)
	if t == probeperf.TCPStream {
		p.Title.Text = fmt.Sprintf("%s Gbit/s, %s", t, r.Cluster)
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.X.Tick.Label.Font.Size = vg.Points(7)
	const width = 14
	for k, n := range counts {
		vals := make(plotter.Values, len(paths))
		for i, path := range paths {
			for _, c := range r.Cells {
				if c.Test != t || c.Path != path || c.Policies != n || c.Err != nil {
					continue
				}
				if l := c.Result.LatencyUS; l != nil {
					vals[i] = l.P50
				} else {
					vals[i] = c.Result.GbitPerS
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, vg.Points(width))
		if err != nil {
			return nil, fmt.Errorf("plotting %s: %w", t, err)
		}
		bars.Color = plotutil.Color(k)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Points(width * (float64(k) - float64(len(counts)-1)/2))
		p.Add(bars)
		p.Legend.Add(fmt.Sprintf("%d policies", n), bars)
	}
	names := make([]string, len(paths))
	for i, path := range paths {
		names[i] = string(path)
	}
	p.NominalX(names...)
	// Room above the tallest bar for the legend.
	p.Y.Min, p.Y.Max = 0, p.Y.Max*1.3
	return p, nil
}
