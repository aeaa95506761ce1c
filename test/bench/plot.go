package bench

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"sort"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// memberColors are the colours of the members in every plot, by the
// members' sorted names.
var memberColors = []color.NRGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xff, 0x7f, 0x0e, 0xff}, {0x2c, 0xa0, 0x2c, 0xff}, {0x94, 0x67, 0xbd, 0xff},
	{0x8c, 0x56, 0x4b, 0xff}, {0xe3, 0x77, 0xc2, 0xff}, {0x17, 0xbe, 0xcf, 0xff},
}

var red = color.NRGBA{0xd6, 0x27, 0x28, 0xff}

// memberColor returns a member's colour with the given alpha.
func memberColor(names []string, member string, alpha uint8) color.NRGBA {
	i := slices.Index(names, member)
	if i < 0 {
		return color.NRGBA{0x80, 0x80, 0x80, alpha}
	}
	c := memberColors[i%len(memberColors)]
	c.A = alpha
	return c
}

// LatencyPhase is one panel of the client-latency plot (P2).
type LatencyPhase struct {
	Name    string
	Start   time.Time
	Points  []LatencyPoint
	Defrags []Interval
}

// LatencyPoint is one request: when it was sent, how long it took, and
// whether it failed.
type LatencyPoint struct {
	At      time.Time
	Latency time.Duration
	Failed  bool
}

// PlotLatency draws one panel per phase: every request's latency (log
// scale) over the time it was sent, failed ones as red crosses, each
// member's defrag shaded in the member's colour.
func PlotLatency(path string, phases []LatencyPhase) error {
	var members []string
	lo, hi, dur := math.Inf(1), 1.0, 1.0
	for _, ph := range phases {
		for _, d := range ph.Defrags {
			if !slices.Contains(members, d.Member) {
				members = append(members, d.Member)
			}
			dur = max(dur, d.End.Sub(ph.Start).Seconds())
		}
		for _, p := range ph.Points {
			ms := max(p.Latency.Seconds()*1000, 0.01)
			lo, hi = min(lo, ms), max(hi, ms)
			dur = max(dur, p.At.Sub(ph.Start).Seconds())
		}
	}
	sort.Strings(members)
	if math.IsInf(lo, 1) {
		lo = 0.1
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi*1.2)))
	plots := make([][]*plot.Plot, len(phases))
	for i, ph := range phases {
		p := plot.New()
		p.Title.Text = ph.Name
		p.X.Label.Text = "seconds since the phase began"
		p.Y.Label.Text = "latency (ms)"
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, dur, lo, hi
		p.Add(plotter.NewGrid())
		for _, d := range ph.Defrags {
			x0, x1 := d.Start.Sub(ph.Start).Seconds(), d.End.Sub(ph.Start).Seconds()
			poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: lo}, {X: x1, Y: lo}, {X: x1, Y: hi}, {X: x0, Y: hi}})
			if err != nil {
				return err
			}
			poly.Color = memberColor(members, d.Member, 0x50)
			poly.Width = 0
			p.Add(poly)
		}
		var ok, failed plotter.XYs
		for _, pt := range ph.Points {
			xy := plotter.XY{X: pt.At.Sub(ph.Start).Seconds(), Y: max(pt.Latency.Seconds()*1000, lo)}
			if pt.Failed {
				failed = append(failed, xy)
			} else {
				ok = append(ok, xy)
			}
		}
		if len(ok) > 0 {
			s, err := plotter.NewScatter(ok)
			if err != nil {
				return err
			}
			s.Radius, s.Color = vg.Points(0.8), color.NRGBA{0, 0, 0, 0x90}
			p.Add(s)
		}
		if len(failed) > 0 {
			s, err := plotter.NewScatter(failed)
			if err != nil {
				return err
			}
			s.Radius, s.Color, s.Shape = vg.Points(2.5), red, draw.CrossGlyph{}
			p.Add(s)
			p.Legend.Add(fmt.Sprintf("failed (%d)", len(failed)), s)
		}
		for _, m := range members {
			i := slices.IndexFunc(ph.Defrags, func(d Interval) bool { return d.Member == m })
			if i < 0 {
				continue
			}
			label := "defrag " + m
			if ph.Defrags[i].Leader {
				label += " (leader)"
			}
			p.Legend.Add(label, swatch(memberColor(members, m, 0x50)))
		}
		p.Legend.Top = true
		plots[i] = []*plot.Plot{p}
	}
	return saveTiles(path, plots, 10*vg.Inch, vg.Length(len(phases))*3*vg.Inch)
}

// SizePhase is one panel of the database-size plot (P3).
type SizePhase struct {
	Name  string
	Start time.Time
	Quota int64
	// Series holds each member's sizes over time.
	Series  map[string][]SizePoint
	Defrags []Interval
	// Alarms are the moments a NOSPACE alarm appeared.
	Alarms []time.Time
}

// SizePoint is one reading of a member's Status.
type SizePoint struct {
	At            time.Time
	DBSize, InUse int64
}

// PlotSizes draws one panel per phase: each member's dbSize over time
// (solid) and dbSizeInUse (thin), the quota and 90 % of it, each defrag as
// a triangle in the member's colour at its start, and NOSPACE alarms as red
// crosses on the quota line.
func PlotSizes(path string, phases []SizePhase) error {
	var dur float64
	for _, ph := range phases {
		for _, pts := range ph.Series {
			if len(pts) > 0 {
				dur = max(dur, pts[len(pts)-1].At.Sub(ph.Start).Seconds()/60)
			}
		}
	}
	plots := make([][]*plot.Plot, len(phases))
	for i, ph := range phases {
		p := plot.New()
		p.Title.Text = ph.Name
		p.X.Label.Text = "minutes"
		p.Y.Label.Text = "MiB"
		quota := float64(ph.Quota) / (1 << 20)
		p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, dur, 0, quota*1.08
		p.Add(plotter.NewGrid())
		members := make([]string, 0, len(ph.Series))
		for m := range ph.Series {
			members = append(members, m)
		}
		sort.Strings(members)
		for _, frac := range []float64{1, 0.9} {
			l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: quota * frac}, {X: dur, Y: quota * frac}})
			if err != nil {
				return err
			}
			l.Color, l.Width = red, vg.Points(1)
			if frac != 1 {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				p.Legend.Add("90 % of the quota", l)
			} else {
				p.Legend.Add("quota", l)
			}
			p.Add(l)
		}
		for _, m := range members {
			var size, inUse plotter.XYs
			for _, pt := range ph.Series[m] {
				x := pt.At.Sub(ph.Start).Seconds() / 60
				size = append(size, plotter.XY{X: x, Y: float64(pt.DBSize) / (1 << 20)})
				inUse = append(inUse, plotter.XY{X: x, Y: float64(pt.InUse) / (1 << 20)})
			}
			if len(size) == 0 {
				continue
			}
			l, err := plotter.NewLine(size)
			if err != nil {
				return err
			}
			l.Color, l.Width = memberColor(members, m, 0xff), vg.Points(1.2)
			p.Add(l)
			p.Legend.Add(m+" dbSize", l)
			u, err := plotter.NewLine(inUse)
			if err != nil {
				return err
			}
			u.Color, u.Width = memberColor(members, m, 0x70), vg.Points(0.6)
			p.Add(u)
			var marks plotter.XYs
			for _, d := range ph.Defrags {
				if d.Member == m {
					marks = append(marks, plotter.XY{X: d.Start.Sub(ph.Start).Seconds() / 60, Y: sizeAt(ph.Series[m], d.Start)})
				}
			}
			if len(marks) > 0 {
				s, err := plotter.NewScatter(marks)
				if err != nil {
					return err
				}
				s.Shape, s.Radius, s.Color = draw.TriangleGlyph{}, vg.Points(3.5), memberColor(members, m, 0xff)
				p.Add(s)
			}
		}
		if len(ph.Alarms) > 0 {
			var xs plotter.XYs
			for _, a := range ph.Alarms {
				xs = append(xs, plotter.XY{X: a.Sub(ph.Start).Seconds() / 60, Y: quota})
			}
			s, err := plotter.NewScatter(xs)
			if err != nil {
				return err
			}
			s.Shape, s.Radius, s.Color = draw.CrossGlyph{}, vg.Points(5), red
			p.Add(s)
			p.Legend.Add("NOSPACE", s)
		}
		p.Legend.Top, p.Legend.Left = true, true
		plots[i] = []*plot.Plot{p}
	}
	return saveTiles(path, plots, 10*vg.Inch, vg.Length(len(phases))*3*vg.Inch)
}

// sizeAt returns the member's dbSize in MiB at the last reading before at.
func sizeAt(pts []SizePoint, at time.Time) float64 {
	var v int64
	for _, p := range pts {
		if p.At.After(at) {
			break
		}
		v = p.DBSize
	}
	return float64(v) / (1 << 20)
}

// PlotRatios draws P1's ratios agents/floor: one group of bars per amount
// of data, one bar per cluster size (the median of the runs), and the goal.
func PlotRatios(path string, rounds []RoundCase, goal float64) error {
	var sizes, memberCounts []int
	for _, rc := range rounds {
		if !slices.Contains(sizes, rc.DataMiB) {
			sizes = append(sizes, rc.DataMiB)
		}
		if !slices.Contains(memberCounts, rc.Members) {
			memberCounts = append(memberCounts, rc.Members)
		}
	}
	slices.Sort(sizes)
	slices.Sort(memberCounts)
	p := plot.New()
	p.Title.Text = "P1: agents' round / back-to-back defrags (median of the runs)"
	p.Y.Label.Text = "ratio"
	p.X.Label.Text = "data written (half of it reclaimable)"
	width := vg.Points(18)
	top := goal
	for i, n := range memberCounts {
		vals := make(plotter.Values, len(sizes))
		for j, s := range sizes {
			for _, rc := range rounds {
				if rc.Members == n && rc.DataMiB == s {
					vals[j] = rc.MedianRatio()
				}
			}
			top = max(top, vals[j])
		}
		b, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		b.Color, b.LineStyle.Width = memberColors[i%len(memberColors)], 0
		b.Offset = vg.Length(float64(i)-float64(len(memberCounts)-1)/2) * width
		p.Add(b)
		p.Legend.Add(fmt.Sprintf("%d members", n), b)
	}
	names := make([]string, len(sizes))
	for i, s := range sizes {
		names[i] = fmt.Sprintf("%d MiB", s)
	}
	p.NominalX(names...)
	g, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: goal}, {X: float64(len(sizes)) - 0.5, Y: goal}})
	if err != nil {
		return err
	}
	g.Color, g.Dashes = red, []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(g)
	p.Legend.Add(fmt.Sprintf("goal %.1f", goal), g)
	p.Y.Min, p.Y.Max = 0, top*1.15
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// PlotScale draws, for the cases of one amount of data, the floor and the
// agents' overhead (agents minus floor) per member against the number of
// members.
func PlotScale(path string, rounds []RoundCase, dataMiB int) error {
	var floor, over plotter.XYs
	for _, rc := range rounds {
		if rc.DataMiB != dataMiB {
			continue
		}
		n := float64(rc.Members)
		floor = append(floor, plotter.XY{X: n, Y: rc.MedianFloor().Seconds() / n * 1000})
		over = append(over, plotter.XY{X: n, Y: rc.MedianOverhead().Seconds() / n * 1000})
	}
	sort.Slice(floor, func(i, j int) bool { return floor[i].X < floor[j].X })
	sort.Slice(over, func(i, j int) bool { return over[i].X < over[j].X })
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Scale: per member, %d MiB of data (median of the runs)", dataMiB)
	p.X.Label.Text = "members"
	p.Y.Label.Text = "ms per member"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	for i, s := range []struct {
		name string
		xys  plotter.XYs
	}{{"floor: defrag time per member", floor}, {"agents' overhead per member", over}} {
		if len(s.xys) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(s.xys)
		if err != nil {
			return err
		}
		l.Color, pts.Color = memberColors[i], memberColors[i]
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// swatch is a legend thumbnail: a filled square.
type swatch color.NRGBA

// Thumbnail draws the square.
func (s swatch) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{{X: c.Min.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Max.Y}, {X: c.Min.X, Y: c.Max.Y}}
	c.FillPolygon(color.NRGBA(s), c.ClipPolygonXY(pts))
}

// saveTiles draws a column of plots, aligned, into a PNG of w by h.
func saveTiles(path string, plots [][]*plot.Plot, w, h vg.Length) error {
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	t := draw.Tiles{Rows: len(plots), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(plots, t, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	return writePNG(path, img)
}
