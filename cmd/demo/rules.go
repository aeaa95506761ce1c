package main

import (
	"fmt"
	"strings"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// demoRule is what the agents use when the production default rule does not
// fire on the demo's data (a small -keys): a fragmented file with a few MiB
// to gain.
const demoRule = "fragmentation > 0.3 && dbSizeFree > 4*1024*1024"

// chooseRule shows how the default rule judges every member, with the
// variables the agents compute, and returns it if it fires on every member;
// otherwise it says so and returns the demo rule, which must fire on every
// member.
func (d *demo) chooseRule() (*rule.Rule, error) {
	def, err := rule.Compile(rule.Default)
	if err != nil {
		return nil, fmt.Errorf("default rule: %w", err)
	}
	d.printf("\nThe production default rule (rule.Default), on each member's variables as the agent computes them\n(rule.NewVars on its Status; never defragmented, so sinceLastDefrag is +Inf):\n")
	if d.judge(def) {
		d.printf("The default rule fires on every member, so the agents run with it, as in production.\n")
		return def, nil
	}
	d.printf("The default rule does not fire on every member: there is too little to reclaim for a defrag to pay,\n"+
		"and a production agent would rightly leave these members alone (the default -keys %d is enough).\n"+
		"For the demo the agents use a demo rule instead:\n", defaultKeys)
	demo, err := rule.Compile(demoRule)
	if err != nil {
		return nil, fmt.Errorf("demo rule: %w", err)
	}
	if !d.judge(demo) {
		return nil, fmt.Errorf("the demo rule %q does not fire on every member either: use more -keys or a larger -value-size", demoRule)
	}
	d.printf("The demo rule fires on every member; the agents run with it.\n")
	return demo, nil
}

// judge prints the rule, its top-level clauses and, per member, the rule
// variables and verdicts; it reports whether the rule fires on every member.
func (d *demo) judge(r *rule.Rule) bool {
	d.printf("  rule: %s\n", r)
	parts := clauses(r.String())
	for i, p := range parts {
		d.printf("  (%d)  %s\n", i+1, p)
	}
	lead := d.lead.ID
	tw := d.table()
	fmt.Fprintf(tw, "  MEMBER\tdbSize\tdbSizeInUse\tdbSizeFree\tdbQuota\tdbQuotaUsage\tfragmentation\tisLeader\tmembers\t")
	for i := range parts {
		fmt.Fprintf(tw, "(%d)\t", i+1)
	}
	fmt.Fprintf(tw, "RULE\n")
	all := true
	for _, m := range d.c.Members() {
		s := d.before[m.ID]
		v := rule.NewVars(rule.Readings{DBSize: s.DBSize, DBSizeInUse: s.InUse, DBQuota: s.Quota, IsLeader: m.ID == lead, Members: len(d.c.Members()), SinceLastDefrag: -1, DiskFree: -1})
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%v\t%d\t", m.Name, mib(s.DBSize), mib(s.InUse),
			mib(int64(v.DBSizeFree)), mib(s.Quota), v.DBQuotaUsage, v.Fragmentation, v.IsLeader, int(v.Members))
		for _, p := range parts {
			fmt.Fprintf(tw, "%s\t", verdict(p.Eval(v)))
		}
		fire, err := r.Eval(v)
		fmt.Fprintf(tw, "%s\n", verdict(fire, err))
		all = all && fire && err == nil
	}
	_ = tw.Flush()
	return all
}

func verdict(b bool, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprint(b)
}

// clauses splits a rule at its top-level "||" and compiles each part; it
// returns nil when the rule has a single clause or a part does not compile on
// its own.
func clauses(src string) []*rule.Rule {
	var parts []string
	depth, start := 0, 0
	var quote rune
	for i, r := range src {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			depth++
		case r == ')' || r == ']' || r == '}':
			depth--
		case r == '|' && depth == 0 && strings.HasPrefix(src[i:], "||"):
			parts = append(parts, src[start:i])
			start = i + 2
		}
	}
	parts = append(parts, src[start:])
	if len(parts) < 2 {
		return nil
	}
	var out []*rule.Rule
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if inner, ok := strings.CutPrefix(p, "("); ok && strings.HasSuffix(inner, ")") && balanced(inner[:len(inner)-1]) {
			p = strings.TrimSpace(inner[:len(inner)-1])
		}
		r, err := rule.Compile(p)
		if err != nil {
			return nil
		}
		out = append(out, r)
	}
	return out
}

// balanced reports whether the parentheses of s never close more than they
// opened and end balanced.
func balanced(s string) bool {
	depth := 0
	for _, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
			if depth < 0 {
				return false
			}
		}
	}
	return depth == 0
}
