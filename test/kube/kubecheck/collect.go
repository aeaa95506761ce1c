package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// cmdCollect copies the kubelet's container log files matching the glob
// patterns into --out/<pod>/<pod uid>-<container>-<file> as they grow, every
// --every, until SIGTERM. The kubelet removes a pod's logs with the pod; a
// StatefulSet's rollout replaces every pod, and etcd's account of the
// defrags across it must survive that. Pod directories are named
// <namespace>_<pod>_<uid>.
func cmdCollect(args []string) error {
	fs := flag.NewFlagSet("collect", flag.ContinueOnError)
	out := fs.String("out", "", "directory to copy into")
	every := fs.Duration("every", 100*time.Millisecond, "how often to look")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		return errors.New("want --out and glob patterns")
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	offsets := map[string]int64{}
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		for _, pattern := range fs.Args() {
			files, err := filepath.Glob(pattern)
			if err != nil {
				return err
			}
			for _, f := range files {
				if err := copyNew(f, *out, offsets); err != nil {
					fmt.Fprintln(os.Stderr, "collect:", err)
				}
			}
		}
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
	}
}

// copyNew appends what f gained since the last look to its copy.
func copyNew(f, out string, offsets map[string]int64) error {
	// .../<namespace>_<pod>_<uid>/<container>/<n>.log
	container := filepath.Base(filepath.Dir(f))
	parts := strings.Split(filepath.Base(filepath.Dir(filepath.Dir(f))), "_")
	if len(parts) != 3 {
		return fmt.Errorf("%s: not a kubelet pod log", f)
	}
	pod, uid := parts[1], parts[2]
	src, err := os.Open(f)
	if err != nil {
		return nil // removed meanwhile
	}
	defer func() { _ = src.Close() }()
	st, err := src.Stat()
	if err != nil || st.Size() <= offsets[f] {
		return nil
	}
	if _, err := src.Seek(offsets[f], io.SeekStart); err != nil {
		return err
	}
	dir := filepath.Join(out, pod)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dst, err := os.OpenFile(filepath.Join(dir, uid+"-"+container+"-"+filepath.Base(f)), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = dst.Close() }() // a failed write is reported by Write
	// Only whole lines: a line still being written is copied next time.
	b, err := io.ReadAll(io.LimitReader(src, st.Size()-offsets[f]))
	if err != nil {
		return err
	}
	if i := strings.LastIndexByte(string(b), '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		return nil
	}
	if _, err := dst.Write(b); err != nil {
		return err
	}
	offsets[f] += int64(len(b))
	return nil
}
