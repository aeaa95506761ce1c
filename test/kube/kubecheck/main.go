// Command kubecheck is the checking half of make kube-e2e: the shell scripts
// start and stop the machinery, kubecheck reads what etcd, the kubelet and
// Prometheus say and judges it. It reads files and JSON on stdin or over
// HTTP; it starts nothing.
//
//	kubecheck defrags [--since T] [--each N] [--leader M] [--done] MEMBER=LOGDIR...
//	kubecheck wait-defrag --since T [--timeout D] MEMBER=LOGDIR...
//	kubecheck pods [--ready] [--restarts-max N] POD... < kubelet-/pods.json
//	kubecheck container --pod P --container C < kubelet-/pods.json
//	kubecheck leader < etcdctl-endpoint-status.json
//	kubecheck fragmented < etcdctl-endpoint-status.json
//	kubecheck samepod KUBEADM.yaml README.yaml
//	kubecheck collect --out DIR GLOB...
//	kubecheck podmonitor [--kubeconfig F] [--job-port P] PODMONITOR.yaml
//	kubecheck rulefile PROMETHEUSRULE.yaml
//	kubecheck prom --url URL [--min N] [--max N] QUERY
//	kubecheck dashboard --url URL DASHBOARD.json
//
// Exit status: 0 when the check holds, 1 when it does not (the reason on
// stderr), 2 for a bad invocation.
package main

import (
	"fmt"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cmds := map[string]func([]string) error{
		"defrags":     cmdDefrags,
		"wait-defrag": cmdWaitDefrag,
		"pods":        cmdPods,
		"container":   cmdContainer,
		"leader":      cmdLeader,
		"samepod":     cmdSamePod,
		"prom":        cmdProm,
		"dashboard":   cmdDashboard,
		"collect":     cmdCollect,
		"podmonitor":  cmdPodMonitor,
		"rulefile":    cmdRuleFile,
		"fragmented":  cmdFragmented,
	}
	if len(args) == 0 || cmds[args[0]] == nil {
		fmt.Fprintln(os.Stderr, "usage: kubecheck defrags|wait-defrag|pods|container|leader|fragmented|samepod|collect|podmonitor|rulefile|prom|dashboard ...")
		return 2
	}
	if err := cmds[args[0]](args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "kubecheck %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
