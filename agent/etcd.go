package agent

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
)

// maxRaftLag is how many log entries the member may be behind the leader's
// last index and still count as caught up.
const maxRaftLag = 1000

// memberStatus is what the cycle uses of a Status response.
type memberStatus struct {
	ID, Leader       uint64
	Endpoint         string
	DBSize           int64
	DBSizeInUse      int64
	Quota            int64 // from Status, else the configured fallback
	QuotaReported    bool  // Status carried the quota (etcd 3.6+)
	Revision         int64
	RaftIndex        uint64
	RaftAppliedIndex uint64
	IsLearner        bool
	Version          string
	// Alarms are the cluster's raised alarms as the member knows them
	// (Status carries them: no raft request needed, unlike AlarmList).
	Alarms []*pb.AlarmMember
}

func (s memberStatus) isLeader() bool { return s.ID != 0 && s.ID == s.Leader }

func (s memberStatus) sizes() *Sizes {
	return &Sizes{DBSize: s.DBSize, DBSizeInUse: s.DBSizeInUse, DBQuota: s.Quota, Revision: s.Revision}
}

// status asks the member behind endpoint for its status. ctx bounds it.
func (a *Agent) status(ctx context.Context, endpoint string) (memberStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	r, err := a.local.Status(ctx, endpoint)
	if err != nil {
		return memberStatus{}, fmt.Errorf("status of %s: %w", endpoint, err)
	}
	s := memberStatus{
		ID: r.Header.MemberId, Leader: r.Leader, Endpoint: endpoint,
		DBSize: r.DbSize, DBSizeInUse: r.DbSizeInUse, Quota: r.DbSizeQuota, QuotaReported: r.DbSizeQuota > 0,
		Revision: r.Header.Revision, RaftIndex: r.RaftIndex, RaftAppliedIndex: r.RaftAppliedIndex,
		IsLearner: r.IsLearner, Version: r.Version, Alarms: parseAlarms(r.Errors),
	}
	if !s.QuotaReported {
		s.Quota = a.cfg.QuotaBytes
	}
	return s, nil
}

// statusOfAny returns the status of the first of urls that answers.
func (a *Agent) statusOfAny(ctx context.Context, urls []string) (memberStatus, error) {
	var errs []error
	for _, u := range urls {
		s, err := a.status(ctx, u)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return memberStatus{}, errors.New("no client URL")
	}
	return memberStatus{}, errors.Join(errs...)
}

// localStatus reads this agent's member's status through every local endpoint
// that answers and checks that they are one member.
func (a *Agent) localStatus(ctx context.Context) (memberStatus, error) {
	var (
		first memberStatus
		found bool
		errs  []error
	)
	for _, ep := range a.local.Endpoints() {
		s, err := a.status(ctx, ep)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !found {
			first, found = s, true
			continue
		}
		if s.ID != first.ID {
			return memberStatus{}, fmt.Errorf("--endpoints must all reach this agent's member: %s is member %x, %s is member %x",
				first.Endpoint, first.ID, s.Endpoint, s.ID)
		}
	}
	if !found {
		return memberStatus{}, errors.Join(errs...)
	}
	a.mu.Lock()
	a.memberID = first.ID
	a.mu.Unlock()
	return first, nil
}

// memberList returns the cluster's members as this agent's member sees them.
func (a *Agent) memberList(ctx context.Context) ([]*pb.Member, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	r, err := a.local.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	return r.Members, nil
}

// voters returns the voting members that have client URLs.
func voters(members []*pb.Member) []*pb.Member {
	var out []*pb.Member
	for _, m := range members {
		if !m.IsLearner && len(m.ClientURLs) > 0 {
			out = append(out, m)
		}
	}
	return out
}

func findMember(members []*pb.Member, id uint64) *pb.Member {
	for _, m := range members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// memberName is how logs and errors name a member: its name and ID as
// etcdctl prints them.
func memberName(m *pb.Member) string {
	if m.Name == "" {
		return fmt.Sprintf("%x", m.ID)
	}
	return fmt.Sprintf("%s (%x)", m.Name, m.ID)
}

// refreshCluster gives the cluster client the client URLs of every voting
// member. It sends requests to the others, steering around one that does
// not answer (it defragments, or is down), and to this agent's own member
// only when it is the only voter: this member stalls while it defragments.
func (a *Agent) refreshCluster(self uint64, members []*pb.Member) error {
	urls := map[uint64][]string{}
	for _, m := range voters(members) {
		urls[m.ID] = m.ClientURLs
	}
	if len(urls) == 0 {
		urls[self] = a.local.Endpoints()
	}
	if err := a.cluster.SetMembers(urls, self); err != nil {
		return fmt.Errorf("cluster client: %w", err)
	}
	return nil
}

// clusterClient returns the client over the voting members.
func (a *Agent) clusterClient() *steer.Client { return a.cluster }

// peerClient returns a client that reaches member m only.
func (a *Agent) peerClient(m *pb.Member) (*clientv3.Client, error) {
	if cli, ok := a.cluster.Member(m.ID); ok {
		return cli, nil
	}
	return nil, fmt.Errorf("no client for member %s: not a voting member with client URLs", memberName(m))
}

// answers checks that the member behind cli serves a read: linearizable (it
// reaches the leader and has applied up to the read index) or serializable
// (its backend is not blocked, as it is during a defrag). A permission error
// counts as an answer. ctx bounds the read, within CommandTimeout.
func (a *Agent) answers(ctx context.Context, cli *clientv3.Client, linearizable bool) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithCountOnly()}
	if !linearizable {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err := cli.Get(ctx, a.keys.Health(), opts...)
	if err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		return err
	}
	return nil
}

// allUp checks, in parallel, that every given member answers Status, and
// names those that do not. Status answers while a member defragments, so
// unlike allAnswer this finds only members that are down (killed, stopped,
// unreachable), not one that is busy with its turn.
func (a *Agent) allUp(ctx context.Context, members []*pb.Member) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, m := range members {
		wg.Go(func() {
			if _, err := a.statusOfAny(ctx, m.ClientURLs); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("member %s is down: %w", memberName(m), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// allAnswer checks, in parallel, that every given member answers a
// linearizable read, and names those that do not.
func (a *Agent) allAnswer(ctx context.Context, members []*pb.Member) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, m := range members {
		wg.Go(func() {
			err := func() error {
				cli, err := a.peerClient(m)
				if err != nil {
					return err
				}
				return a.answers(ctx, cli, true)
			}()
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("member %s did not answer a linearizable read: %w", memberName(m), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// alarms lists the cluster's raised alarms, from a fresh Status of this
// agent's member: Status carries them, where AlarmList is a raft request (a
// write to the log every member must apply, which a leader that
// defragments cannot, and a wait for this member to apply it).
func (a *Agent) alarms(ctx context.Context) (nospace, corrupt []*pb.AlarmMember, err error) {
	st, err := a.localStatus(ctx)
	if err != nil {
		return nil, nil, err
	}
	nospace, corrupt = a.observeAlarms(st)
	return nospace, corrupt, nil
}

// observeAlarms splits a status read's alarms and exports them as gauges.
func (a *Agent) observeAlarms(st memberStatus) (nospace, corrupt []*pb.AlarmMember) {
	for _, am := range st.Alarms {
		switch am.Alarm {
		case pb.AlarmType_NOSPACE:
			nospace = append(nospace, am)
		case pb.AlarmType_CORRUPT:
			corrupt = append(corrupt, am)
		}
	}
	a.metrics.alarm.WithLabelValues("nospace").Set(boolGauge(len(nospace) > 0))
	a.metrics.alarm.WithLabelValues("corrupt").Set(boolGauge(len(corrupt) > 0))
	return nospace, corrupt
}

// alarmError is how etcd lists a raised alarm among Status's errors (the
// protobuf text of an AlarmMember): "memberID:10276657743932975437 alarm:NOSPACE".
var alarmError = regexp.MustCompile(`^memberID:(\d+) alarm:([A-Z_]+)\s*$`)

// parseAlarms reads the alarms among the errors of a Status response;
// other errors ("etcdserver: no leader") are not alarms.
func parseAlarms(errs []string) []*pb.AlarmMember {
	var out []*pb.AlarmMember
	for _, e := range errs {
		m := alarmError.FindStringSubmatch(e)
		if m == nil {
			continue
		}
		id, err := strconv.ParseUint(m[1], 10, 64)
		typ, known := pb.AlarmType_value[m[2]]
		if err != nil || !known {
			continue
		}
		out = append(out, &pb.AlarmMember{MemberID: id, Alarm: pb.AlarmType(typ)})
	}
	return out
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// isPermissionDenied tells an etcd auth refusal.
func isPermissionDenied(err error) bool {
	return errors.Is(err, errPermission) || errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) ||
		strings.Contains(fmt.Sprint(err), rpctypes.ErrPermissionDenied.Error())
}

// isNoSpace tells a write refused under the NOSPACE alarm.
func isNoSpace(err error) bool {
	return errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace) ||
		strings.Contains(fmt.Sprint(err), rpctypes.ErrNoSpace.Error())
}
