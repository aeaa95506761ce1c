package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdlog"
)

// defrag is one defragmentation of one member, by etcd's own account: its
// log lines (package internal/etcdlog).
type defrag = etcdlog.Defrag

// memberLogs is a NAME=PATH argument: PATH is a container's log directory
// (every *.log file in it, the kubelet's CRI format: one per container
// instance) or a single file.
type memberLogs struct{ name, path string }

func parseMemberLogs(args []string) ([]memberLogs, error) {
	var out []memberLogs
	for _, a := range args {
		name, path, ok := strings.Cut(a, "=")
		if !ok || name == "" || path == "" {
			return nil, fmt.Errorf("argument %q: want MEMBER=LOGDIR", a)
		}
		out = append(out, memberLogs{name, path})
	}
	if len(out) == 0 {
		return nil, errors.New("no MEMBER=LOGDIR arguments")
	}
	return out, nil
}

// readDefrags returns the defragmentations in the members' etcd logs that
// started at or after since, ordered by start.
func readDefrags(members []memberLogs, since time.Time) ([]defrag, error) {
	var all []defrag
	for _, m := range members {
		files := []string{m.path}
		if st, err := os.Stat(m.path); err != nil {
			return nil, err
		} else if st.IsDir() {
			files, err = filepath.Glob(filepath.Join(m.path, "*.log"))
			if err != nil {
				return nil, err
			}
		}
		// One file per container instance, in the order they ran. A defrag
		// left unfinished in an instance that was followed by another ended
		// when that instance stopped: at its last entry, at the latest.
		var instances [][]logEntry
		for _, f := range files {
			es, err := readCRILog(f)
			if err != nil {
				return nil, err
			}
			if len(es) > 0 {
				sort.SliceStable(es, func(i, j int) bool { return es[i].TS.Before(es[j].TS) })
				instances = append(instances, es)
			}
		}
		sort.SliceStable(instances, func(i, j int) bool { return instances[i][0].TS.Before(instances[j][0].TS) })
		for k, entries := range instances {
			var cur *defrag
			for _, e := range entries {
				switch e.Msg {
				case etcdlog.MsgStart:
					cur = &defrag{Member: m.name, Start: e.TS}
				case etcdlog.MsgEnd, etcdlog.MsgEnd34, etcdlog.MsgFailed:
					if cur != nil {
						cur.End = e.TS
						if e.Msg == etcdlog.MsgFailed {
							cur.Err = "failed"
						}
						all = append(all, *cur)
						cur = nil
					}
				}
			}
			if cur != nil {
				if k < len(instances)-1 {
					cur.End, cur.Err = entries[len(entries)-1].TS, "the member stopped"
				}
				all = append(all, *cur)
			}
		}
	}
	all = slices.DeleteFunc(all, func(d defrag) bool { return d.Start.Before(since) })
	sort.SliceStable(all, func(i, j int) bool { return all[i].Start.Before(all[j].Start) })
	return all, nil
}

type logEntry struct {
	TS  time.Time
	Msg string
}

// readCRILog reads the JSON entries etcd wrote to a container log in the
// kubelet's CRI format: "<time> <stream> <F|P> <line>".
func readCRILog(path string) ([]logEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []logEntry
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadString('\n')
		if i := strings.IndexByte(line, '{'); i >= 0 && strings.Contains(line, `"msg"`) {
			var e struct {
				TS  string `json:"ts"`
				Msg string `json:"msg"`
			}
			if json.Unmarshal([]byte(line[i:]), &e) == nil && e.Msg != "" {
				ts, perr := time.Parse(time.RFC3339Nano, e.TS)
				if perr == nil {
					out = append(out, logEntry{ts, e.Msg})
				}
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
}

// cmdDefrags prints etcd's account of the defragmentations since --since and
// checks it: never two at once (always), each member exactly --each times,
// the --leader's last.
func cmdDefrags(args []string) error {
	fs := flag.NewFlagSet("defrags", flag.ContinueOnError)
	since := fs.String("since", "", "only defrags that started at or after this RFC 3339 time")
	each := fs.Int("each", -1, "every member defragmented exactly this many times (-1: no check)")
	atLeast := fs.Int("at-least", -1, "every member defragmented at least this many times (-1: no check)")
	leader := fs.String("leader", "", "this member's defrag comes after every other member's")
	done := fs.Bool("done", false, "no defrag is still running")
	runningAt := fs.String("running-at", "", "MEMBER@TIME: the member was defragmenting at that RFC 3339 time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	members, err := parseMemberLogs(fs.Args())
	if err != nil {
		return err
	}
	var t time.Time
	if *since != "" {
		if t, err = time.Parse(time.RFC3339Nano, *since); err != nil {
			return fmt.Errorf("--since: %w", err)
		}
	}
	ds, err := readDefrags(members, t)
	if err != nil {
		return err
	}
	var problems []string
	for _, d := range ds {
		fmt.Println("defrag", d)
		if *done && d.Running() {
			problems = append(problems, "still running: "+d.String())
		}
	}
	for _, p := range etcdlog.Overlaps(ds) {
		problems = append(problems, fmt.Sprintf("OVERLAP: %s and %s", p[0], p[1]))
	}
	if *each >= 0 {
		for _, m := range members {
			n := 0
			for _, d := range ds {
				if d.Member == m.name {
					n++
				}
			}
			if n != *each {
				problems = append(problems, fmt.Sprintf("member %s: %d defrags, want %d", m.name, n, *each))
			}
		}
	}
	if *atLeast >= 0 {
		for _, m := range members {
			n := 0
			for _, d := range ds {
				if d.Member == m.name {
					n++
				}
			}
			if n < *atLeast {
				problems = append(problems, fmt.Sprintf("member %s: %d defrags, want at least %d", m.name, n, *atLeast))
			}
		}
	}
	if *leader != "" {
		var last *defrag
		for i := range ds {
			if ds[i].Member == *leader {
				last = &ds[i]
			}
		}
		if last == nil {
			problems = append(problems, "the leader "+*leader+" was not defragmented")
		} else {
			for _, d := range ds {
				if d.Member != *leader && !d.Start.Before(last.Start) {
					problems = append(problems, fmt.Sprintf("leader %s went before %s", last, d))
				}
			}
		}
	}
	if *runningAt != "" {
		m, at, ok := strings.Cut(*runningAt, "@")
		t, err := time.Parse(time.RFC3339Nano, at)
		if !ok || err != nil {
			return fmt.Errorf("--running-at %q: want MEMBER@RFC3339", *runningAt)
		}
		found := false
		for _, d := range ds {
			if d.Member == m && !d.Start.After(t) && (d.Running() || d.End.After(t)) {
				found = true
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("%s was not defragmenting at %s", m, t.Format("15:04:05.000")))
		}
	}
	fmt.Printf("%d defrags, %d members\n", len(ds), len(members))
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// cmdWaitDefrag waits until a defragmentation that started at or after
// --since is running on one of the members and prints that member's name.
func cmdWaitDefrag(args []string) error {
	fs := flag.NewFlagSet("wait-defrag", flag.ContinueOnError)
	since := fs.String("since", "", "RFC 3339 time")
	timeout := fs.Duration("timeout", 3*time.Minute, "how long to wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	members, err := parseMemberLogs(fs.Args())
	if err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339Nano, *since)
	if err != nil {
		return fmt.Errorf("--since: %w", err)
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		ds, err := readDefrags(members, t)
		if err != nil {
			return err
		}
		for _, d := range ds {
			if d.Running() {
				fmt.Println(d.Member)
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond) // polling a file; not synchronisation
	}
	return fmt.Errorf("no defrag started within %v", *timeout)
}
