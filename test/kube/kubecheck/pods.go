package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// podList is the part of a v1.PodList (the kubelet's /pods, or kubectl get
// -o json) that the checks read.
type podList struct {
	Items []pod `json:"items"`
}

type pod struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Status struct {
		Phase             string            `json:"phase"`
		HostIP            string            `json:"hostIP"`
		PodIP             string            `json:"podIP"`
		ContainerStatuses []containerStatus `json:"containerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name         string         `json:"name"`
	Ready        bool           `json:"ready"`
	RestartCount int            `json:"restartCount"`
	State        containerState `json:"state"`
	LastState    containerState `json:"lastState"`
}

type containerState struct {
	Running *struct{} `json:"running"`
	Waiting *struct {
		Reason string `json:"reason"`
	} `json:"waiting"`
	Terminated *terminated `json:"terminated"`
}

type terminated struct {
	ExitCode int    `json:"exitCode"`
	Reason   string `json:"reason"`
	Message  string `json:"message"`
}

func (s containerState) String() string {
	switch {
	case s.Running != nil:
		return "running"
	case s.Waiting != nil:
		return "waiting(" + s.Waiting.Reason + ")"
	case s.Terminated != nil:
		return fmt.Sprintf("terminated(exit %d, %s)", s.Terminated.ExitCode, s.Terminated.Reason)
	}
	return "-"
}

func readPods() (podList, error) {
	var l podList
	if err := json.NewDecoder(os.Stdin).Decode(&l); err != nil {
		return l, fmt.Errorf("decode the pod list on stdin: %w", err)
	}
	return l, nil
}

func findPod(l podList, name string) *pod {
	for i := range l.Items {
		if l.Items[i].Metadata.Name == name {
			return &l.Items[i]
		}
	}
	return nil
}

// cmdPods prints the named pods' containers and checks them: with --ready
// every container is ready; with --restarts-max none restarted more often.
func cmdPods(args []string) error {
	fs := flag.NewFlagSet("pods", flag.ContinueOnError)
	ready := fs.Bool("ready", false, "every container of every named pod is ready")
	restarts := fs.Int("restarts-max", -1, "no container restarted more often (-1: no check)")
	quiet := fs.Bool("q", false, "print only problems")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := readPods()
	if err != nil {
		return err
	}
	var problems []string
	for _, name := range fs.Args() {
		p := findPod(l, name)
		if p == nil {
			problems = append(problems, "no pod "+name)
			continue
		}
		if len(p.Status.ContainerStatuses) == 0 {
			problems = append(problems, name+": no container statuses yet")
		}
		for _, c := range p.Status.ContainerStatuses {
			if !*quiet {
				fmt.Printf("%s/%s ready=%v restarts=%d state=%s last=%s hostIP=%q podIP=%q\n",
					name, c.Name, c.Ready, c.RestartCount, c.State, c.LastState, p.Status.HostIP, p.Status.PodIP)
			}
			if *ready && !c.Ready {
				problems = append(problems, fmt.Sprintf("%s/%s not ready (%s)", name, c.Name, c.State))
			}
			if *restarts >= 0 && c.RestartCount > *restarts {
				problems = append(problems, fmt.Sprintf("%s/%s restarted %d times (last: %s)", name, c.Name, c.RestartCount, c.LastState))
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// cmdContainer prints one container's status as shell assignments:
// ready, restarts, state, last_exit, last_message (one line each, the
// message with newlines as spaces).
func cmdContainer(args []string) error {
	fs := flag.NewFlagSet("container", flag.ContinueOnError)
	podName := fs.String("pod", "", "pod name")
	name := fs.String("container", "", "container name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := readPods()
	if err != nil {
		return err
	}
	p := findPod(l, *podName)
	if p == nil {
		return fmt.Errorf("no pod %s", *podName)
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.Name != *name {
			continue
		}
		exit, msg := "", ""
		if t := c.LastState.Terminated; t != nil {
			exit, msg = fmt.Sprint(t.ExitCode), strings.Join(strings.Fields(t.Message), " ")
		}
		if t := c.State.Terminated; t != nil {
			exit, msg = fmt.Sprint(t.ExitCode), strings.Join(strings.Fields(t.Message), " ")
		}
		fmt.Printf("ready=%v\nrestarts=%d\nstate=%q\nlast_exit=%q\nlast_message=%q\n", c.Ready, c.RestartCount, c.State.String(), exit, msg)
		return nil
	}
	return fmt.Errorf("pod %s: no container %s", *podName, *name)
}

// cmdLeader prints the client URL of the member that leads, from
// `etcdctl endpoint status --cluster -w json` on stdin; it fails unless
// every member names the same leader.
func cmdLeader(_ []string) error {
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&st); err != nil {
		return fmt.Errorf("decode the endpoint status on stdin: %w", err)
	}
	var leader uint64
	url := ""
	for _, s := range st {
		if leader != 0 && s.Status.Leader != leader {
			return fmt.Errorf("members disagree on the leader: %x and %x", leader, s.Status.Leader)
		}
		leader = s.Status.Leader
		if s.Status.Header.MemberID == s.Status.Leader {
			url = s.Endpoint
		}
	}
	if url == "" {
		return errors.New("no member leads")
	}
	fmt.Println(url)
	return nil
}

// cmdFragmented succeeds when every member in `etcdctl endpoint status -w
// json` (stdin) reports a file more than half free with over 100 MiB free:
// the default rule's second clause, as the agents will see it.
func cmdFragmented(_ []string) error {
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			DBSize      int64 `json:"dbSize"`
			DBSizeInUse int64 `json:"dbSizeInUse"`
		} `json:"Status"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&st); err != nil {
		return fmt.Errorf("decode the endpoint status on stdin: %w", err)
	}
	var problems []string
	for _, s := range st {
		free := s.Status.DBSize - s.Status.DBSizeInUse
		fmt.Printf("%s: dbSize %d, in use %d\n", s.Endpoint, s.Status.DBSize, s.Status.DBSizeInUse)
		if free*2 <= s.Status.DBSize || free <= 100<<20 {
			problems = append(problems, fmt.Sprintf("%s reports %d of %d bytes in use", s.Endpoint, s.Status.DBSizeInUse, s.Status.DBSize))
		}
	}
	if len(st) == 0 || len(problems) > 0 {
		return fmt.Errorf("not fragmented: %v", problems)
	}
	return nil
}
