package agent

import "time"

// inflightRecord is written to defrag/<member>, fenced by the lock, right
// before the Defragment request, and removed once the member answers again.
// It is not leased: if the agent dies mid-defrag, the next lock holder finds
// it and waits for that member before doing anything.
type inflightRecord struct {
	Member   string    `json:"member_id"`
	Endpoint string    `json:"endpoint"`
	Agent    string    `json:"agent,omitempty"`
	Start    time.Time `json:"start"`
	// Deadline is when the agent stops waiting for the member (Start plus
	// --defrag-timeout).
	Deadline time.Time `json:"deadline"`
}

// lastRecord is last/<member>: the member's last defrag by an agent, whatever
// its result. The cooldown runs from End; sinceLastDefrag from LastSuccess.
type lastRecord struct {
	Member      string    `json:"member_id"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	Before      *Sizes    `json:"before,omitempty"`
	After       *Sizes    `json:"after,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Agent       string    `json:"agent,omitempty"`
	// Verify is the HashKV check after the defrag: "pending" from the end of
	// the turn until the check ends, then "ok" or "failed"; empty when it is
	// off or the defrag failed.
	Verify string `json:"verify,omitempty"`
	// CopyRates are the in-use bytes per second that the member's last
	// successful defrags copied, the newest last (see forecast.go).
	CopyRates []float64 `json:"copy_rates_bytes_per_second,omitempty"`
}

// The values of lastRecord.Verify.
const (
	verifyPending = "pending"
	verifyOK      = "ok"
	verifyFailed  = "failed"
)
