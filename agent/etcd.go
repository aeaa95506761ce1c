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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// memberClient is what the agent asks of its own member: the requests of
// etcd's client that it sends to the endpoints of --endpoints.
// *clientv3.Client implements it.
type memberClient interface {
	Endpoints() []string
	Status(ctx context.Context, endpoint string) (*clientv3.StatusResponse, error)
	MemberList(ctx context.Context, opts ...clientv3.OpOption) (*clientv3.MemberListResponse, error)
	Defragment(ctx context.Context, endpoint string) (*clientv3.DefragmentResponse, error)
	HashKV(ctx context.Context, endpoint string, rev int64) (*clientv3.HashKVResponse, error)
	MoveLeader(ctx context.Context, transfereeID uint64) (*clientv3.MoveLeaderResponse, error)
	Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error)
	AlarmList(ctx context.Context) (*clientv3.AlarmResponse, error)
	AlarmDisarm(ctx context.Context, m *clientv3.AlarmMember) (*clientv3.AlarmResponse, error)
	AuthStatus(ctx context.Context) (*clientv3.AuthStatusResponse, error)
	UserGet(ctx context.Context, name string) (*clientv3.AuthUserGetResponse, error)
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Close() error
}

var _ memberClient = (*clientv3.Client)(nil)

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

// need is how much the member needs a defrag (see need).
func (s memberStatus) need() need {
	n := need{free: max(s.DBSize-s.DBSizeInUse, 0), id: s.ID}
	if s.Quota > 0 {
		n.usage = float64(s.DBSize) / float64(s.Quota)
	}
	return n
}

func (s memberStatus) sizes() *Sizes {
	return &Sizes{DBSize: s.DBSize, DBSizeInUse: s.DBSizeInUse, DBQuota: s.Quota, Revision: s.Revision}
}

// alarms splits the status's alarms.
func (s memberStatus) alarms() (nospace, corrupt []*pb.AlarmMember) {
	for _, am := range s.Alarms {
		switch am.Alarm {
		case pb.AlarmType_NOSPACE:
			nospace = append(nospace, am)
		case pb.AlarmType_CORRUPT:
			corrupt = append(corrupt, am)
		}
	}
	return nospace, corrupt
}

// status asks the member behind endpoint for its status. ctx bounds it,
// within CommandTimeout.
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
		IsLearner: r.IsLearner, Version: r.Version,
	}
	if !s.QuotaReported {
		s.Quota = a.cfg.QuotaBytes
	}
	var unread bool
	if s.Alarms, unread = parseAlarms(r.Errors); unread {
		// An alarm in a form this agent cannot read: ask etcd for the list
		// (a raft request) rather than miss a NOSPACE.
		l, err := a.local.AlarmList(ctx)
		if err != nil {
			return memberStatus{}, fmt.Errorf("alarm list (Status of %s lists alarms it cannot read: %q): %w", endpoint, r.Errors, err)
		}
		s.Alarms = l.Alarms
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
	a.observeAlarms(first)
	return first, nil
}

// observeAlarms exports a status read's alarms as gauges and returns them.
func (a *Agent) observeAlarms(st memberStatus) (nospace, corrupt []*pb.AlarmMember) {
	nospace, corrupt = st.alarms()
	a.metrics.alarm.WithLabelValues("nospace").Set(boolGauge(len(nospace) > 0))
	a.metrics.alarm.WithLabelValues("corrupt").Set(boolGauge(len(corrupt) > 0))
	return nospace, corrupt
}

// alarmError is how etcd lists a raised alarm among Status's errors: the
// protobuf text of an AlarmMember, "memberID:10276657743932975437 alarm:NOSPACE"
// (etcd 3.7's protobuf library varies the spaces between fields on purpose).
var alarmError = regexp.MustCompile(`^memberID:\s*(\d+)\s+alarm:\s*([A-Z_]+)\s*$`)

// parseAlarms reads the alarms among the errors of a Status response;
// other errors ("etcdserver: no leader") are not alarms. unread reports an
// error that names an alarm in a form it cannot read.
func parseAlarms(errs []string) (alarms []*pb.AlarmMember, unread bool) {
	for _, e := range errs {
		m := alarmError.FindStringSubmatch(e)
		if m == nil {
			unread = unread || strings.Contains(e, "alarm")
			continue
		}
		id, err := strconv.ParseUint(m[1], 10, 64)
		typ, known := pb.AlarmType_value[m[2]]
		if err != nil || !known {
			unread = true
			continue
		}
		alarms = append(alarms, &pb.AlarmMember{MemberID: id, Alarm: pb.AlarmType(typ)})
	}
	return alarms, unread
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

// without returns members without the member id.
func without(members []*pb.Member, id uint64) []*pb.Member {
	var out []*pb.Member
	for _, m := range members {
		if m.ID != id {
			out = append(out, m)
		}
	}
	return out
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

// peerClient returns a client that reaches member m only.
func (a *Agent) peerClient(m *pb.Member) (*clientv3.Client, error) {
	if cli, ok := a.cluster.Member(m.ID); ok {
		return cli, nil
	}
	return nil, fmt.Errorf("no client for member %s: not a voting member with client URLs", memberName(m))
}

// probe is how reachable checks ask a member.
type probe int

const (
	// probeStatus: the member answers Status. It does while it
	// defragments, so this finds members that are down (killed, stopped,
	// unreachable), not one busy with its turn.
	probeStatus probe = iota
	// probeLinearizable: the member answers a linearizable read: it reaches
	// the leader and has applied up to the read index, so the others keep
	// quorum without it and it is not defragmenting.
	probeLinearizable
	// probeSerializable: the member's backend answers a read (it is not
	// blocked by a defrag).
	probeSerializable
)

// reachable checks, in parallel, that every given member answers the probe,
// and names those that do not. It is the one quorum check of the agent:
// before queueing, at the health gate, and before each defrag of a NOSPACE
// recovery.
func (a *Agent) reachable(ctx context.Context, members []*pb.Member, how probe) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, m := range members {
		wg.Go(func() {
			if err := a.probe(ctx, m, how); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (a *Agent) probe(ctx context.Context, m *pb.Member, how probe) error {
	if how == probeStatus {
		if _, err := a.statusOfAny(ctx, m.ClientURLs); err != nil {
			return fmt.Errorf("member %s is down: %w", memberName(m), err)
		}
		return nil
	}
	cli, err := a.peerClient(m)
	if err == nil {
		err = a.answers(ctx, cli, how == probeLinearizable)
	}
	if err != nil {
		kind := "a serializable"
		if how == probeLinearizable {
			kind = "a linearizable"
		}
		return fmt.Errorf("member %s did not answer %s read: %w", memberName(m), kind, err)
	}
	return nil
}

// answers checks that the member behind cli serves a read: linearizable (it
// reaches the leader and has applied up to the read index) or serializable
// (its backend is not blocked, as it is during a defrag). A permission error
// counts as an answer. ctx bounds the read, within CommandTimeout.
func (a *Agent) answers(ctx context.Context, cli memberReader, linearizable bool) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithCountOnly()}
	if !linearizable {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err := cli.Get(ctx, a.board.Keys().Health(), opts...)
	if err != nil && !isPermissionDenied(err) {
		return err
	}
	return nil
}

// memberReader reads from one member.
type memberReader interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// errPermission marks a missing-role finding as a permission error.
var errPermission = errors.New("permission denied")

// isPermissionDenied tells an etcd auth refusal.
func isPermissionDenied(err error) bool {
	return errors.Is(err, errPermission) || etcdIs(err, rpctypes.ErrGRPCPermissionDenied) ||
		status.Code(err) == codes.PermissionDenied
}

// isNoSpace tells a write refused under the NOSPACE alarm.
func isNoSpace(err error) bool { return etcdIs(err, rpctypes.ErrGRPCNoSpace) }

// etcdIs reports whether err is, or wraps, etcd's error target, either as
// etcd's client returns it (rpctypes.EtcdError) or as a gRPC status (the
// same code and message).
func etcdIs(err error, target error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.Error(target)) {
		return true
	}
	s, ok := grpcStatus(err)
	t := status.Convert(target)
	return ok && s.Code() == t.Code() && s.Message() == t.Message()
}

// grpcStatus returns the gRPC status err is or wraps, with its own message
// (status.FromError gives a wrapped status the whole error's text).
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) || se.GRPCStatus() == nil {
		return nil, false
	}
	return se.GRPCStatus(), true
}

// isDeadline tells a request that ended on its deadline (etcd may go on):
// the client's own, the server's, or etcd 3.4's answer to a request whose
// deadline passed (code Unknown, "context deadline exceeded").
func isDeadline(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	s, ok := grpcStatus(err)
	return ok && (s.Code() == codes.DeadlineExceeded ||
		s.Code() == codes.Unknown && s.Message() == context.DeadlineExceeded.Error())
}
