package bench

import (
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Plot draws t's ratios as horizontal bars around 1.0 into a PNG at path
// (rows without a ratio are left out).
func (t Table) Plot(path string) error {
	var vals plotter.Values
	var names []string
	for i := len(t.Rows) - 1; i >= 0; i-- { // plot draws bottom-up: keep the table's order
		r := t.Rows[i]
		if math.IsNaN(r.Ratio) || math.IsInf(r.Ratio, 0) {
			continue
		}
		vals = append(vals, r.Ratio)
		names = append(names, fmt.Sprintf("%s (%s better)", r.Figure, r.Better))
	}
	if len(vals) == 0 {
		return fmt.Errorf("plot: no ratios to draw")
	}
	p := plot.New()
	p.Title.Text = t.Title
	p.X.Label.Text = fmt.Sprintf("ratio %s / %s (same run)", t.SideA, t.SideB)
	bars, err := plotter.NewBarChart(vals, vg.Points(12))
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	bars.Horizontal = true
	p.Add(bars, plotter.NewGrid())
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(len(vals)) - 0.5}})
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(one)
	p.NominalY(names...)
	p.X.Min = 0
	if err := p.Save(9*vg.Inch, vg.Length(1.2+0.3*float64(len(vals)))*vg.Inch, path); err != nil {
		return fmt.Errorf("plot: writing %s: %w", path, err)
	}
	return nil
}
