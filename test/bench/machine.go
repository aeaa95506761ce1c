package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Machine describes the machine a run measured, for the report.
type Machine struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	MemBytes int64  `json:"mem_bytes"`
	OS       string `json:"os"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	// Disk describes the device and filesystem of the directory the
	// members' data lives in.
	Disk string `json:"disk"`
	// Fdatasync percentiles of an 8 KiB write followed by fdatasync, and
	// sequential write throughput (256 MiB, one fsync), in that directory:
	// etcd's WAL and defrag speed depend on them.
	FdatasyncP50 time.Duration `json:"fdatasync_p50_ns"`
	FdatasyncP99 time.Duration `json:"fdatasync_p99_ns"`
	SeqWriteMBps float64       `json:"seq_write_mb_per_s"`
}

// LoadAvg returns the three load averages of /proc/loadavg.
func LoadAvg() ([3]float64, error) {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l, err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return l, fmt.Errorf("/proc/loadavg: %q", b)
	}
	for i := range l {
		if l[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return l, fmt.Errorf("/proc/loadavg: %w", err)
		}
	}
	return l, nil
}

// DescribeMachine reads /proc and /sys for the machine's description and
// measures the disk of dir. Fields it cannot read stay empty.
func DescribeMachine(dir string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	m.CPU = firstValue("/proc/cpuinfo", "model name", ":")
	if kb, err := strconv.ParseInt(strings.TrimSuffix(firstValue("/proc/meminfo", "MemTotal", ":"), " kB"), 10, 64); err == nil {
		m.MemBytes = kb << 10
	}
	m.OS = strings.Trim(firstValue("/etc/os-release", "PRETTY_NAME", "="), `"`)
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.Disk = describeDisk(dir)
	m.FdatasyncP50, m.FdatasyncP99, m.SeqWriteMBps = measureDisk(dir)
	return m
}

// firstValue returns the value of the first line of path whose key is key,
// with lines of the form "key<sep>value".
func firstValue(path, key, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// describeDisk names the block device and filesystem that hold dir, from
// /proc/self/mountinfo and /sys/class/block.
func describeDisk(dir string) string {
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	var best, fstype, source string
	for line := range strings.SplitSeq(string(b), "\n") {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		mp := f[4]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best, fstype, source = mp, g[0], g[1]
		}
	}
	if best == "" {
		return ""
	}
	s := fmt.Sprintf("%s (%s, mounted on %s)", source, fstype, best)
	dev := filepath.Base(source)
	if sectors, err := os.ReadFile(filepath.Join("/sys/class/block", dev, "size")); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(sectors)), 10, 64); err == nil {
			s += fmt.Sprintf(", %d GiB", n*512>>30)
		}
	}
	if link, err := os.Readlink(filepath.Join("/sys/class/block", dev, "device", "driver")); err == nil {
		s += ", driver " + filepath.Base(link)
	} else if strings.HasPrefix(dev, "vd") {
		s += ", virtio"
	}
	return s
}

// measureDisk times 200 fdatasyncs of 8 KiB writes and one sequential
// write of 256 MiB with an fsync, in a temporary file in dir.
func measureDisk(dir string) (p50, p99 time.Duration, mbps float64) {
	f, err := os.CreateTemp(dir, "bench-disk-")
	if err != nil {
		return 0, 0, 0
	}
	defer func() { _ = os.Remove(f.Name()) }()
	defer func() { _ = f.Close() }()
	buf := make([]byte, 8<<10)
	var lat []time.Duration
	for range 200 {
		start := time.Now()
		if _, err := f.Write(buf); err != nil {
			return 0, 0, 0
		}
		if err := fdatasync(f); err != nil {
			return 0, 0, 0
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	big := make([]byte, 1<<20)
	start := time.Now()
	for range 256 {
		if _, err := f.Write(big); err != nil {
			return p50, p99, 0
		}
	}
	if err := f.Sync(); err != nil {
		return p50, p99, 0
	}
	return p50, p99, 256 * (1 << 20) / 1e6 / time.Since(start).Seconds()
}
