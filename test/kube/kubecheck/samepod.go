package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// cmdSamePod compares two static pod manifests: the one kubeadm's phase
// wrote with the repository's patches (first argument) and the one a user
// gets by following the README (second). etcd's own command line and image
// are the node's (kubeadm writes them from its configuration; the README
// has the user edit addresses), so they are printed as information and left
// out of the comparison; everything else must be equal.
func cmdSamePod(args []string) error {
	fs := flag.NewFlagSet("samepod", flag.ContinueOnError)
	etcd := fs.String("etcd-container", "etcd", "the container whose command and image are the node's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("want two manifests")
	}
	var pods [2]map[string]any
	var cmds [2][]string
	for i, f := range fs.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := yaml.Unmarshal(b, &pods[i]); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		pods[i] = prune(pods[i]).(map[string]any)
		spec, _ := pods[i]["spec"].(map[string]any)
		cs, _ := spec["containers"].([]any)
		for _, c := range cs {
			c := c.(map[string]any)
			if c["name"] == *etcd {
				for _, a := range c["command"].([]any) {
					cmds[i] = append(cmds[i], fmt.Sprint(a))
				}
				delete(c, "command")
				delete(c, "image")
			}
		}
		if cmds[i] == nil {
			return fmt.Errorf("%s: no container %q with a command", f, *etcd)
		}
	}
	for _, a := range cmds[0] {
		if !slices.Contains(cmds[1], a) {
			fmt.Printf("etcd flag only in %s: %s\n", fs.Arg(0), a)
		}
	}
	for _, a := range cmds[1] {
		if !slices.Contains(cmds[0], a) {
			fmt.Printf("etcd flag only in %s: %s\n", fs.Arg(1), a)
		}
	}
	var diffs []string
	diff("", pods[0], pods[1], &diffs)
	if len(diffs) > 0 {
		return fmt.Errorf("the pods differ (%s vs %s):\n%s", fs.Arg(0), fs.Arg(1), strings.Join(diffs, "\n"))
	}
	fmt.Println("same pod (etcd's own flags and image aside)")
	return nil
}

// prune drops null values and empty maps, which the serializers of kubeadm
// and of a hand-written file render differently (creationTimestamp: null,
// status: {}).
func prune(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			e = prune(e)
			if m, ok := e.(map[string]any); e == nil || ok && len(m) == 0 {
				delete(v, k)
				continue
			}
			v[k] = e
		}
		return v
	case []any:
		for i := range v {
			v[i] = prune(v[i])
		}
		return v
	}
	return v
}

// diff lists the paths where a and b differ. Lists of objects with a
// "name" (containers, volumes, mounts) are compared by name, as a strategic
// merge patch merges them.
func diff(path string, a, b any, out *[]string) {
	if reflect.DeepEqual(a, b) {
		return
	}
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			diff(path+"."+k, am[k], bm[k], out)
		}
		return
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok && named(al) && named(bl) {
		byName := func(l []any) map[string]any {
			m := map[string]any{}
			for _, e := range l {
				m[fmt.Sprint(e.(map[string]any)["name"])] = e
			}
			return m
		}
		diff(path, byName(al), byName(bl), out)
		return
	}
	*out = append(*out, fmt.Sprintf("%s: %v != %v", path, short(a), short(b)))
}

func named(l []any) bool {
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok || m["name"] == nil {
			return false
		}
	}
	return len(l) > 0
}

func short(v any) string {
	b, _ := yaml.Marshal(v)
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return strings.ReplaceAll(s, "\n", " | ")
}
