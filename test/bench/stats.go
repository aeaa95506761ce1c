package bench

import (
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0..100) of ds by the
// nearest-rank method; 0 for no values. ds need not be sorted.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Median returns the median of xs; 0 for no values.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Interval is a span of time, such as one member's defrag.
type Interval struct {
	Member string `json:"member"`
	// Leader says the member led when the run began.
	Leader bool      `json:"leader,omitempty"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
}

// Seconds returns the interval's length in seconds.
func (i Interval) Seconds() float64 { return i.End.Sub(i.Start).Seconds() }
