package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

func TestCopyRate(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name     string
		own      *coord.Last
		others   map[uint64]coord.Last
		wantRate float64
		wantSrc  rateSource
	}{
		{"nothing recorded", nil, nil, defaultCopyRate, rateDefault},
		{"own record without rates", &coord.Last{}, nil, defaultCopyRate, rateDefault},
		{"own rates: the median", &coord.Last{CopyRates: []float64{300 * mib, 100 * mib, 200 * mib}}, nil, 200 * mib, rateOwn},
		{"own rates, even count", &coord.Last{CopyRates: []float64{100 * mib, 200 * mib}}, nil, 150 * mib, rateOwn},
		{"own rates win over the cluster's", &coord.Last{CopyRates: []float64{10 * mib}}, map[uint64]coord.Last{2: {CopyRates: []float64{400 * mib}}}, 10 * mib, rateOwn},
		{"the others' latest rates", nil, map[uint64]coord.Last{
			2: {CopyRates: []float64{1 * mib, 100 * mib}}, 3: {CopyRates: []float64{300 * mib}}, 4: {},
		}, 200 * mib, rateCluster},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rate, src := copyRate(tc.own, tc.others)
			if rate != tc.wantRate || src != tc.wantSrc {
				t.Errorf("copyRate = %v (%s), want %v (%s)", rate, src, tc.wantRate, tc.wantSrc)
			}
		})
	}
}

func TestExpectedDuration(t *testing.T) {
	tests := []struct {
		inUse int64
		rate  float64
		want  time.Duration
	}{
		{8 << 30, 100 << 20, 81920 * time.Millisecond},
		{4 << 30, defaultCopyRate, 81920 * time.Millisecond},
		{0, 100 << 20, 0},
		{1 << 30, 0, 0},
	}
	for _, tc := range tests {
		if got := expectedDuration(tc.inUse, tc.rate); got != tc.want {
			t.Errorf("expectedDuration(%d, %v) = %v, want %v", tc.inUse, tc.rate, got, tc.want)
		}
	}
}

func TestWithRate(t *testing.T) {
	const mib = 1 << 20
	got := withRate(nil, 100*mib, time.Second)
	if want := []float64{100 * mib}; !slices.Equal(got, want) {
		t.Errorf("first rate = %v, want %v", got, want)
	}
	if got := withRate([]float64{1}, 4*mib, time.Second); !slices.Equal(got, []float64{1}) {
		t.Errorf("a defrag of 4 MiB in use changed the rates to %v: too small to measure", got)
	}
	if got := withRate([]float64{1}, 100*mib, 0); !slices.Equal(got, []float64{1}) {
		t.Errorf("a defrag of no duration changed the rates to %v", got)
	}
	rates := []float64{1, 2, 3, 4, 5}
	got = withRate(rates, 60*mib, 2*time.Second)
	if want := []float64{2, 3, 4, 5, 30 * mib}; !slices.Equal(got, want) {
		t.Errorf("sixth rate: %v, want the last five %v", got, want)
	}
	if !slices.Equal(rates, []float64{1, 2, 3, 4, 5}) {
		t.Errorf("withRate changed its argument: %v", rates)
	}
}

func TestBytesIEC(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 8 << 30: "8.0 GiB", 300 << 20: "300.0 MiB",
	} {
		if got := bytesIEC(n); got != want {
			t.Errorf("bytesIEC(%d) = %q, want %q", n, got, want)
		}
	}
}
