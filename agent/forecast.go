package agent

import (
	"fmt"
	"slices"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// The duration forecast: how long a defrag of a member will take, from the
// rate at which its recorded defrags copied its in-use bytes (etcd's defrag
// copies the live data into a new file; the free pages cost nothing).

// defaultCopyRate is the copy rate assumed before any member of the cluster
// has a recorded defrag: 50 MiB/s, several times slower than a defrag on a
// local SSD (300–400 MiB/s on this project's test machine; etcd users report
// 4 GiB in about 15 s), so that the first forecast errs long on a slow or
// busy disk.
const defaultCopyRate = 50 << 20

// rateSamples is how many measured rates a member's record keeps.
const rateSamples = 5

// minRateBytes is the least in-use size whose defrag measures a rate: below
// it etcd's fixed costs (fsync, reopening the file) dominate the duration.
const minRateBytes = 8 << 20

// rateSource says where a forecast's copy rate comes from.
type rateSource string

const (
	rateOwn     rateSource = "member"  // this member's recorded defrags
	rateCluster rateSource = "cluster" // the other members' recorded defrags
	rateDefault rateSource = "default" // none recorded yet: defaultCopyRate
)

// text says where the rate comes from, for messages.
func (s rateSource) text() string {
	switch s {
	case rateOwn:
		return "this member's recorded defrags"
	case rateCluster:
		return "the other members' recorded defrags"
	}
	return fmt.Sprintf("the default of %s/s: no member has a recorded defrag yet", bytesIEC(defaultCopyRate))
}

// copyRate returns the rate to forecast with: the median of the member's own
// recorded rates, else the median of the other members' latest ones (members
// of one cluster tend to run on alike disks), else defaultCopyRate.
func copyRate(own *coord.Last, others map[uint64]coord.Last) (float64, rateSource) {
	if own != nil && len(own.CopyRates) > 0 {
		return median(own.CopyRates), rateOwn
	}
	var latest []float64
	for _, r := range others {
		if n := len(r.CopyRates); n > 0 {
			latest = append(latest, r.CopyRates[n-1])
		}
	}
	if len(latest) > 0 {
		return median(latest), rateCluster
	}
	return defaultCopyRate, rateDefault
}

// expectedDuration forecasts a defrag of inUse bytes at rate bytes/s.
func expectedDuration(inUse int64, rate float64) time.Duration {
	if rate <= 0 || inUse <= 0 {
		return 0
	}
	return time.Duration(float64(inUse) / rate * float64(time.Second))
}

// withRate returns the recorded rates after a defrag that copied inUse bytes
// in took: the last rateSamples, the new one last. A defrag too small to
// measure leaves them as they were.
func withRate(rates []float64, inUse int64, took time.Duration) []float64 {
	if inUse < minRateBytes || took <= 0 {
		return rates
	}
	out := append(slices.Clone(rates), float64(inUse)/took.Seconds())
	return out[max(len(out)-rateSamples, 0):]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
