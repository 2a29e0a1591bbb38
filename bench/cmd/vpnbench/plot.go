package main

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writePlot draws the median setUp time against the route count, log-log,
// one line per series of the route-count scenario, into path (PNG, or
// another format gonum/plot knows from the extension).
func writePlot(path string, rows []PerRoute) error {
	p := plot.New()
	p.Title.Text = "vpnd setUp time against route count (medians)"
	p.X.Label.Text = "routes"
	p.Y.Label.Text = "setUp time (ms)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())

	var order []string
	points := map[string]plotter.XYs{}
	for _, r := range rows {
		if r.MedianMs <= 0 {
			continue
		}
		if _, ok := points[r.Series]; !ok {
			order = append(order, r.Series)
		}
		points[r.Series] = append(points[r.Series], plotter.XY{X: float64(r.Routes), Y: r.MedianMs})
	}
	if len(order) == 0 {
		return fmt.Errorf("no route-count figures to plot")
	}
	colors := []color.Color{
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // vpnd
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	}
	shapes := []draw.GlyphDrawer{draw.CircleGlyph{}, draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.CrossGlyph{}}
	for i, name := range order {
		l, s, err := plotter.NewLinePoints(points[name])
		if err != nil {
			return err
		}
		c := colors[i%len(colors)]
		l.Color, s.Color = c, c
		l.Width = vg.Points(1.5)
		s.Shape = shapes[i%len(shapes)]
		s.Radius = vg.Points(3)
		p.Add(l, s)
		p.Legend.Add(name, l, s)
	}
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}
