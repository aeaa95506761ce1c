package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// Results is everything one run of the suite measured: the input of the
// report. The benchmarks fill it in as they finish; the run writes it as
// JSON next to the report, so the report can be rendered again from it.
type Results struct {
	mu sync.Mutex

	Quick    bool      `json:"quick"`
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// LoadStart and LoadEnd are /proc/loadavg's three averages when the run
	// started and ended.
	LoadStart [3]float64 `json:"load_start"`
	LoadEnd   [3]float64 `json:"load_end"`
	// LoadMax is the highest 1-minute load average read when a benchmark
	// started or ended, and every 10 seconds during P3.
	LoadMax float64 `json:"load_max"`
	// QuietWait is how long the run waited for the machine to be quiet
	// before it started.
	QuietWait time.Duration `json:"quiet_wait_ns"`
	Machine   Machine       `json:"machine"`
	Etcd      string        `json:"etcd"`
	Agent     string        `json:"agent"`

	Rounds    []RoundCase     `json:"rounds,omitempty"`
	Impact    *ClientImpact   `json:"client_impact,omitempty"`
	Quota     []QuotaKeeping  `json:"quota_keeping,omitempty"`
	Footprint *Footprint      `json:"footprint,omitempty"`
	NoSpace   []NoSpaceCase   `json:"nospace,omitempty"`
	Failed    map[string]bool `json:"failed,omitempty"`
	// Merges are later runs of some benchmarks (BENCH_MERGE) whose numbers
	// replaced this run's for what they measured.
	Merges []Merge `json:"merges,omitempty"`
}

// Merge is one run merged into the results.
type Merge struct {
	Command  string     `json:"command"`
	Started  time.Time  `json:"started"`
	Finished time.Time  `json:"finished"`
	Agent    string     `json:"agent"`
	LoadEnd  [3]float64 `json:"load_end"`
}

// RoundCase is P1 for one cluster size and amount of data: the floor
// (back-to-back Defragment calls, followers then the leader) against the
// agents started at once with --once, on identical copies of the data.
type RoundCase struct {
	Members int `json:"members"`
	// Label names a variant of the agents' flags ("" for P1's own), and
	// ExtraArgs are the flags it adds.
	Label     string   `json:"label,omitempty"`
	ExtraArgs []string `json:"extra_args,omitempty"`
	// DataMiB is what was written, half of it deleted and compacted.
	DataMiB int `json:"data_mib"`
	// AgentArgs are the agents' flags (the harness adds the endpoint, lock
	// prefix, web address and log format).
	AgentArgs []string `json:"agent_args"`
	// DBSize and DBSizeInUse are the leader's sizes before each run.
	DBSize      int64      `json:"db_size_bytes"`
	DBSizeInUse int64      `json:"db_size_in_use_bytes"`
	Runs        []RoundRun `json:"runs"`
}

// RoundRun is one repetition of a RoundCase.
type RoundRun struct {
	// Floor is from the first Defragment request to the last answer.
	Floor        time.Duration `json:"floor_ns"`
	FloorDefrags []Interval    `json:"floor_defrags"`
	// Agents is from the first agent's start to the last agent's exit.
	Agents        time.Duration `json:"agents_ns"`
	AgentsDefrags []Interval    `json:"agents_defrags"`
	// Profile splits the agents' round into its parts.
	Profile RoundProfile `json:"profile"`
	// Forecasts are the agents' forecasts of their defrags against etcd's
	// account of them.
	Forecasts []Forecast `json:"forecasts,omitempty"`
}

// Forecast is one agent's forecast of its member's defrag (its
// "defragmenting" event) and the defrag's duration by etcd's log.
type Forecast struct {
	Member string `json:"member"`
	// Source is what the forecast was based on: "member", "cluster" or
	// "default" (see the README's long defrags).
	Source    string        `json:"source"`
	Predicted time.Duration `json:"predicted_ns"`
	Measured  time.Duration `json:"measured_ns"`
}

// Error is (Predicted - Measured) / Measured: positive when the forecast
// was too long.
func (f Forecast) Error() float64 {
	return (f.Predicted.Seconds() - f.Measured.Seconds()) / f.Measured.Seconds()
}

// Ratio is Agents/Floor.
func (r RoundRun) Ratio() float64 { return r.Agents.Seconds() / r.Floor.Seconds() }

// OwnShare is the agents' own time — their round minus their defrags by
// etcd's log — as a share of the floor: the round's cost without the
// run-to-run variation of the defrags themselves (a defrag of the same file
// varies by a tenth between runs here).
func (r RoundRun) OwnShare() float64 {
	return (r.Agents - r.Profile.Defrags).Seconds() / r.Floor.Seconds()
}

// RoundProfile is where the agents' round spent its time, from etcd's log
// lines (the defrag intervals) and the agents' log events. The parts add
// up to the round: Start + Defrags + Handoffs + Tail.
type RoundProfile struct {
	// Start: from the agents' start to the first defrag's start.
	Start time.Duration `json:"start_ns"`
	// Defrags: the sum of the defrags by etcd's log.
	Defrags time.Duration `json:"defrags_ns"`
	// Handoffs: the sum of the gaps between one defrag's end and the next
	// one's start (Turns has each).
	Handoffs time.Duration `json:"handoffs_ns"`
	// Tail: from the last defrag's end to the last agent's exit.
	Tail time.Duration `json:"tail_ns"`

	// The parts of Start, by the log events of the agent that went first:
	//   Exec: from its start to its "starting" event (exec, configuration);
	//   Connect: to its first "status" (clients, the member's Status);
	//   Session: to "session started" (alarms, member list, last record,
	//   rule, root check, lease grant, announcement);
	//   Queue: to "lock taken" (pending announcement, the lock);
	//   Checks and Dispatch: as in a Handoff.
	Exec     time.Duration `json:"exec_ns"`
	Connect  time.Duration `json:"connect_ns"`
	Session  time.Duration `json:"session_ns"`
	Queue    time.Duration `json:"queue_ns"`
	Checks   time.Duration `json:"checks_ns"`
	Dispatch time.Duration `json:"dispatch_ns"`

	// Turns are the handoffs, in order.
	Turns []Handoff `json:"turns"`

	// TailVerify is the last defrag's verification (as Handoff.Verify);
	// Exit from the last agent's "defragmented" to its exit (record,
	// unlock, announcement, session close).
	TailVerify time.Duration `json:"tail_verify_ns"`
	Exit       time.Duration `json:"exit_ns"`

	// LeaderWait and LockWait are the agents' own accounts (their cycle
	// events), summed over the agents: they overlap other agents' defrags.
	LeaderWait time.Duration `json:"leader_wait_ns"`
	LockWait   time.Duration `json:"lock_wait_ns"`
}

// Handoff is the gap between one member's defrag and the next one's, split
// at the agents' log events.
type Handoff struct {
	From string `json:"from"`
	To   string `json:"to"`
	// ToLeader says the next member led.
	ToLeader bool `json:"to_leader,omitempty"`
	// Verify: from etcd's end of the defrag to its agent's "defragmented"
	// event (the member answers again, Status, HashKV of it and of a peer).
	Verify time.Duration `json:"verify_ns"`
	// Release: from "defragmented" to the next agent's "lock taken"
	// (record, unlock, the next agent's lock watch or leader's wait).
	Release time.Duration `json:"release_ns"`
	// Checks: from "lock taken" to "defragmenting" (fresh Status, member
	// list, last record, rule, health gate, lease renewal, fenced in-flight
	// record, announcement).
	Checks time.Duration `json:"checks_ns"`
	// Dispatch: from "defragmenting" to etcd's start of the defrag.
	Dispatch time.Duration `json:"dispatch_ns"`
}

// Sum returns the sums of the turns' parts.
func (p RoundProfile) Sum() Handoff {
	var h Handoff
	for _, t := range p.Turns {
		h.Verify += t.Verify
		h.Release += t.Release
		h.Checks += t.Checks
		h.Dispatch += t.Dispatch
	}
	return h
}

// ClientImpact is P2: a steady client load during no defrag, the agents'
// round and an uncoordinated defrag of every member at once.
type ClientImpact struct {
	Members   int           `json:"members"`
	DataMiB   int           `json:"data_mib"`
	Rate      float64       `json:"rate_per_s"`
	Clients   int           `json:"clients"`
	ValueSize int           `json:"value_size"`
	Timeout   time.Duration `json:"timeout_ns"`
	Phases    []LoadPhase   `json:"phases"`
	Generator string        `json:"generator"`
}

// LoadPhase is the client load's account of one phase of P2.
type LoadPhase struct {
	Name     string `json:"name"`
	Requests int    `json:"requests"`
	Failed   int    `json:"failed"`
	// Errors counts the failed requests by error.
	Errors map[string]int `json:"errors,omitempty"`
	P50    time.Duration  `json:"p50_ns"`
	P99    time.Duration  `json:"p99_ns"`
	Max    time.Duration  `json:"max_ns"`
	// Stall is the longest time during which no request completed
	// successfully.
	Stall   time.Duration `json:"stall_ns"`
	Defrags []Interval    `json:"defrags"`
	Seconds float64       `json:"seconds"`
	// Rate is the successful requests per second of the phase.
	Rate float64 `json:"rate_per_s"`
}

// LongestDefrag returns the longest defrag of the phase.
func (p LoadPhase) LongestDefrag() time.Duration {
	var d time.Duration
	for _, i := range p.Defrags {
		d = max(d, i.End.Sub(i.Start))
	}
	return d
}

// QuotaKeeping is P3 at one intensity of the churn: a churn workload
// against a small quota with auto-compaction on, under several defrag
// regimes run side by side.
type QuotaKeeping struct {
	// Name names the intensity.
	Name string `json:"name"`
	// Plot is the file name of the intensity's plot in bench/.
	Plot       string         `json:"plot"`
	Quota      int64          `json:"quota_bytes"`
	Duration   time.Duration  `json:"duration_ns"`
	Compaction string         `json:"compaction"`
	Churn      ChurnOptions   `json:"churn"`
	Variants   []QuotaVariant `json:"variants"`
}

// QuotaVariant is one defrag regime of P3.
type QuotaVariant struct {
	Name string `json:"name"`
	// How says what defragmented: the command line or the schedule.
	How string `json:"how"`
	// Alarms counts NOSPACE alarms raised (by member, as AlarmList showed
	// them appear); FirstAlarm is when the first appeared, from the start.
	Alarms     int           `json:"alarms"`
	FirstAlarm time.Duration `json:"first_alarm_ns,omitempty"`
	// Rejected counts the churn's writes refused with NOSPACE.
	Churn ChurnStats `json:"churn"`
	// Defrags counts defrags by the members' logs; Reclaimed is what each
	// gave back to the filesystem (the file's size before less after, by
	// the same log lines).
	Defrags   int     `json:"defrags"`
	Reclaimed []int64 `json:"reclaimed_bytes,omitempty"`
	// Peak is each member's highest dbSize/quota seen.
	Peak map[string]float64 `json:"peak"`
	// InUsePeak is the highest dbSizeInUse/quota of any member: what the
	// data and the history etcd keeps took at their peak.
	InUsePeak float64 `json:"in_use_peak"`
}

// ReclaimedMedian is what the median defrag of Reclaimed gave back (0
// without defrags).
func (v QuotaVariant) ReclaimedMedian() int64 {
	xs := make([]float64, len(v.Reclaimed))
	for i, b := range v.Reclaimed {
		xs[i] = float64(b)
	}
	return int64(Median(xs))
}

// ReclaimedTotal is what the defrags of Reclaimed gave back together.
func (v QuotaVariant) ReclaimedTotal() int64 {
	var sum int64
	for _, b := range v.Reclaimed {
		sum += b
	}
	return sum
}

// MaxPeak returns the highest peak over the members.
func (v QuotaVariant) MaxPeak() float64 {
	var p float64
	for _, x := range v.Peak {
		p = max(p, x)
	}
	return p
}

// Footprint is P4: what an idle agent costs, and how fast it answers.
type Footprint struct {
	Idle     time.Duration `json:"idle_ns"`
	Schedule string        `json:"schedule"`
	// Per agent, from /proc: the highest resident set seen, and the CPU
	// time spent over the idle window.
	RSSMax []int64         `json:"rss_max_bytes"`
	CPU    []time.Duration `json:"cpu_ns"`
	// From the agents' own process_* metrics at the end of the window.
	MetricRSS []int64 `json:"metric_rss_bytes"`
	// Scrapes of /metrics: count and latency percentiles.
	Scrapes   int           `json:"scrapes"`
	ScrapeP50 time.Duration `json:"scrape_p50_ns"`
	ScrapeP99 time.Duration `json:"scrape_p99_ns"`
	ScrapeMax time.Duration `json:"scrape_max_ns"`
	// MetricsBytes is the size of one /metrics page.
	MetricsBytes int `json:"metrics_bytes"`
	// Rule evaluation: rule.BenchmarkEvalDefault.
	RuleNsPerOp     float64 `json:"rule_ns_per_op"`
	RuleBytesPerOp  float64 `json:"rule_bytes_per_op"`
	RuleAllocsPerOp float64 `json:"rule_allocs_per_op"`
}

// NoSpaceCase is P5: from the NOSPACE alarm to a writable cluster with the
// agents alone.
type NoSpaceCase struct {
	Quota    int64         `json:"quota_bytes"`
	Schedule string        `json:"schedule"`
	Runs     []NSRun       `json:"runs"`
	Members  int           `json:"members"`
	Took     time.Duration `json:"took_ns"`
}

// NSRun is one repetition of a NoSpaceCase.
type NSRun struct {
	// Writable is from the alarm to the first successful put; FromFirst
	// from the first recovery defrag's start to it.
	Writable  time.Duration `json:"writable_ns"`
	FromFirst time.Duration `json:"from_first_ns"`
	// Defrags are the recovery's defrags by etcd's log; their sum is the
	// floor of a recovery.
	Defrags []Interval `json:"defrags"`
}

// DefragSum returns the sum of the run's defrag durations.
func (r NSRun) DefragSum() time.Duration {
	var d time.Duration
	for _, i := range r.Defrags {
		d += i.End.Sub(i.Start)
	}
	return d
}

// Update changes r under its lock.
func (r *Results) Update(fn func(r *Results)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r)
}

// Save writes r as indented JSON to path.
func (r *Results) Save(path string) error {
	r.mu.Lock()
	b, err := json.MarshalIndent(r, "", "  ")
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// LoadResults reads results written by Save.
func LoadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := new(Results)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// MedianFloor returns the median floor of the case's runs.
func (rc RoundCase) MedianFloor() time.Duration {
	return medianOf(rc.Runs, func(r RoundRun) float64 { return r.Floor.Seconds() })
}

// MedianAgents returns the median agents' round of the case's runs.
func (rc RoundCase) MedianAgents() time.Duration {
	return medianOf(rc.Runs, func(r RoundRun) float64 { return r.Agents.Seconds() })
}

// MedianOverhead returns the median of the runs' agents minus floor.
func (rc RoundCase) MedianOverhead() time.Duration {
	return medianOf(rc.Runs, func(r RoundRun) float64 { return (r.Agents - r.Floor).Seconds() })
}

// OwnShares returns the median, the least and the most of the runs'
// OwnShare.
func (rc RoundCase) OwnShares() (med, lo, hi float64) {
	var xs []float64
	for _, r := range rc.Runs {
		xs = append(xs, r.OwnShare())
	}
	return Median(xs), slices.Min(xs), slices.Max(xs)
}

// MedianRatio returns the median of the runs' ratios.
func (rc RoundCase) MedianRatio() float64 {
	var xs []float64
	for _, r := range rc.Runs {
		xs = append(xs, r.Ratio())
	}
	return Median(xs)
}

func medianOf(runs []RoundRun, f func(RoundRun) float64) time.Duration {
	var xs []float64
	for _, r := range runs {
		xs = append(xs, f(r))
	}
	return seconds(Median(xs))
}

// seconds converts float seconds.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
