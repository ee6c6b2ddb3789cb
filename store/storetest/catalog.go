package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

func testServices(t *testing.T, st Stores) {
	ctx := t.Context()
	c := st.Catalog
	before := time.Now().Add(-time.Second)
	svc := targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindSandbox, Sandbox: "sbx-1"}
	put := func(s targets.Service, wantGen int64, wantChanged bool) targets.Service {
		t.Helper()
		saved, changed, err := c.PutService(ctx, s)
		if err != nil {
			t.Fatalf("PutService(%+v): %v", s, err)
		}
		if saved.Generation != wantGen || changed != wantChanged || !s.SameDefinition(saved) ||
			saved.TenantID != s.TenantID || saved.Name != s.Name {
			t.Fatalf("PutService(%+v) = %+v, changed %v; want generation %d, changed %v", s, saved, changed, wantGen, wantChanged)
		}
		if saved.UpdatedAt.Before(before) || saved.UpdatedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("UpdatedAt = %v, not the time of the write", saved.UpdatedAt)
		}
		got, err := c.GetService(ctx, s.TenantID, s.Name)
		if err != nil || !reflect.DeepEqual(got, saved) {
			t.Fatalf("GetService = %+v, %v; want %+v", got, err, saved)
		}
		return saved
	}
	first := put(svc, 1, true)
	// The same definition again keeps generation and UpdatedAt, even with
	// stale server-assigned fields in the request.
	same := svc
	same.Generation, same.UpdatedAt = 99, time.Unix(1, 0)
	if again := put(same, 1, false); again != first {
		t.Errorf("unchanged PutService returned %+v, want the stored %+v", again, first)
	}
	svc.Sandbox = "sbx-2"
	put(svc, 2, true)
	svc.Dynamic = true
	put(svc, 3, true)
	put(targets.Service{TenantID: "demo", Name: "api", Kind: targets.KindExternal, URL: "http://api"}, 1, true)
	put(targets.Service{TenantID: "other", Name: "zz", Kind: targets.KindBuiltin}, 1, true)

	list, err := c.ListServices(ctx, "demo")
	if err != nil || len(list) != 2 || list[0].Name != "api" || list[1].Name != "worker" || list[1].Generation != 3 {
		t.Fatalf("ListServices = %+v, %v", list, err)
	}
	if list, err := c.ListServices(ctx, "nobody"); err != nil || len(list) != 0 {
		t.Errorf("ListServices(nobody) = %+v, %v", list, err)
	}

	if err := c.DeleteService(ctx, "demo", "worker"); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetService(ctx, "demo", "worker")
	wantCode(t, err, problem.NotFound)
	wantCode(t, c.DeleteService(ctx, "demo", "worker"), problem.NotFound)
	wantCode(t, c.DeleteService(ctx, "demo", "zz"), problem.NotFound) // other tenant's
	_, err = c.GetService(ctx, "demo", "zz")
	wantCode(t, err, problem.NotFound)

	// A re-created service continues the deleted one's generations, so a
	// precondition taken on the old definition cannot pass on the new.
	phoenix, _, err := c.PutService(ctx, targets.Service{TenantID: "demo", Name: "phoenix", Kind: targets.KindBuiltin})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteService(ctx, "demo", "phoenix"); err != nil {
		t.Fatal(err)
	}
	after, _, err := c.PutService(ctx, targets.Service{TenantID: "demo", Name: "phoenix", Kind: targets.KindBuiltin})
	if err != nil || after.Generation != phoenix.Generation+1 {
		t.Errorf("re-created service: generation %d (was %d), %v", after.Generation, phoenix.Generation, err)
	}
}

func testSandboxes(t *testing.T, st Stores) {
	ctx := t.Context()
	c := st.Catalog
	sb := targets.Sandbox{
		TenantID: "demo", ID: "sbx-1", State: targets.Pending,
		Command: []string{"/bin/sh", "-c", "echo hi"}, TTY: true, Env: []string{"A=1", "B=2"}, Root: "/data/sbx-1",
	}
	created, err := c.CreateSandbox(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if created.Generation != 1 || created.UpdatedAt.IsZero() {
		t.Fatalf("CreateSandbox = %+v; want generation 1 and UpdatedAt set", created)
	}
	want := sb
	want.Generation, want.UpdatedAt = 1, created.UpdatedAt
	if !reflect.DeepEqual(created, want) {
		t.Errorf("CreateSandbox = %+v, want %+v", created, want)
	}
	if got, err := c.GetSandbox(ctx, "demo", "sbx-1"); err != nil || !reflect.DeepEqual(got, created) {
		t.Errorf("GetSandbox = %+v, %v; want %+v", got, err, created)
	}

	// Not stopped: a duplicate, in every live state.
	for _, state := range []targets.SandboxState{targets.Pending, targets.Ready, targets.Failed} {
		if state != targets.Pending {
			if _, err := c.SetSandboxState(ctx, "demo", "sbx-1", state, "boom"); err != nil {
				t.Fatal(err)
			}
		}
		_, err := c.CreateSandbox(ctx, sb)
		wantCode(t, err, problem.AlreadyExists)
	}

	got, err := c.SetSandboxState(ctx, "demo", "sbx-1", targets.Failed, "exec: not found")
	if err != nil || got.State != targets.Failed || got.Error != "exec: not found" || got.Generation != 1 {
		t.Fatalf("SetSandboxState(failed) = %+v, %v", got, err)
	}
	if got.UpdatedAt.Before(created.UpdatedAt) {
		t.Errorf("UpdatedAt went back: %v < %v", got.UpdatedAt, created.UpdatedAt)
	}
	time.Sleep(2 * time.Millisecond) // UpdatedAt has ms precision
	got, err = c.SetSandboxState(ctx, "demo", "sbx-1", targets.Stopped, "ignored")
	if err != nil || got.State != targets.Stopped || got.Error != "" || !got.UpdatedAt.After(created.UpdatedAt) {
		t.Fatalf("SetSandboxState(stopped) = %+v, %v; want stopped, no error, a later UpdatedAt", got, err)
	}
	if read, _ := c.GetSandbox(ctx, "demo", "sbx-1"); !reflect.DeepEqual(read, got) {
		t.Errorf("GetSandbox = %+v, SetSandboxState returned %+v", read, got)
	}

	// Stopped: re-created at generation+1 with the new definition.
	sb2 := targets.Sandbox{TenantID: "demo", ID: "sbx-1", State: targets.Pending, Command: []string{"sleep", "1"}}
	re, err := c.CreateSandbox(ctx, sb2)
	if err != nil {
		t.Fatalf("CreateSandbox over a stopped one: %v", err)
	}
	if re.Generation != 2 || re.TTY || re.Error != "" || !reflect.DeepEqual(re.Command, sb2.Command) || re.Env != nil {
		t.Errorf("re-created = %+v", re)
	}
	if read, _ := c.GetSandbox(ctx, "demo", "sbx-1"); !reflect.DeepEqual(read, re) {
		t.Errorf("GetSandbox = %+v, CreateSandbox returned %+v", read, re)
	}

	_, err = c.GetSandbox(ctx, "demo", "sbx-missing")
	wantCode(t, err, problem.NotFound)
	_, err = c.SetSandboxState(ctx, "demo", "sbx-missing", targets.Ready, "")
	wantCode(t, err, problem.NotFound)

	for _, s := range []targets.Sandbox{
		{TenantID: "demo", ID: "sbx-0", State: targets.Ready, Command: []string{"a"}},
		{TenantID: "acme", ID: "sbx-9", State: targets.Ready, Command: []string{"b"}},
	} {
		if _, err := c.CreateSandbox(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.ListSandboxes(ctx, "demo")
	if err != nil || len(list) != 2 || list[0].ID != "sbx-0" || list[1].ID != "sbx-1" {
		t.Errorf("ListSandboxes(demo) = %+v, %v", list, err)
	}
	all, err := c.ListSandboxes(ctx, "")
	if err != nil || len(all) != 3 {
		t.Errorf("ListSandboxes(\"\") = %+v, %v; want every tenant's 3", all, err)
	}
	_, err = c.GetSandbox(ctx, "acme", "sbx-1")
	wantCode(t, err, problem.NotFound)
}

// testSandboxUIDs: a sandbox's user id is stored, survives a reopen and the
// replacement of a stopped sandbox, and is never held by two sandboxes, of
// one tenant or two (issue 12: ids were a hash of the name, not stored, and
// a collision gave one tenant's files to another after a restart).
func testSandboxUIDs(t *testing.T, st Stores) {
	ctx := t.Context()
	c := st.Catalog
	for _, s := range []targets.Sandbox{
		{TenantID: "demo", ID: "a", Command: []string{"sh"}},
		{TenantID: "demo", ID: "b", Command: []string{"sh"}},
		{TenantID: "acme", ID: "a", Command: []string{"sh"}},
	} {
		// A UID in the request is not stored: only SetSandboxUID gives one.
		s.UID = 300001
		if got, err := c.CreateSandbox(ctx, s); err != nil || got.UID != 0 {
			t.Fatalf("CreateSandbox(%s/%s) = uid %d, %v; want none", s.TenantID, s.ID, got.UID, err)
		}
	}
	got, err := c.SetSandboxUID(ctx, "demo", "a", 300001)
	if err != nil || got.UID != 300001 || got.ID != "a" || got.Generation != 1 {
		t.Fatalf("SetSandboxUID(demo/a) = %+v, %v", got, err)
	}
	if read, err := c.GetSandbox(ctx, "demo", "a"); err != nil || read.UID != 300001 {
		t.Fatalf("GetSandbox(demo/a) = uid %d, %v; want 300001", read.UID, err)
	}
	if _, err := c.SetSandboxUID(ctx, "demo", "a", 300001); err != nil {
		t.Fatalf("SetSandboxUID again with its own id: %v", err)
	}
	_, err = c.SetSandboxUID(ctx, "demo", "b", 300001)
	wantCode(t, err, problem.AlreadyExists)
	_, err = c.SetSandboxUID(ctx, "acme", "a", 300001) // another tenant's sandbox of the same name
	wantCode(t, err, problem.AlreadyExists)
	if read, _ := c.GetSandbox(ctx, "acme", "a"); read.UID != 0 {
		t.Fatalf("a refused SetSandboxUID left uid %d", read.UID)
	}
	_, err = c.SetSandboxUID(ctx, "demo", "missing", 300009)
	wantCode(t, err, problem.NotFound)
	if _, err := c.SetSandboxUID(ctx, "acme", "a", 300002); err != nil {
		t.Fatal(err)
	}
	all, err := c.ListSandboxes(ctx, "")
	if err != nil || len(all) != 3 || all[0].UID != 300002 || all[1].UID != 300001 || all[2].UID != 0 {
		t.Fatalf("ListSandboxes = %+v, %v; want uids 300002, 300001, 0", all, err)
	}

	// A stopped sandbox re-created keeps its id: its root's files are that
	// id's.
	if _, err := c.SetSandboxState(ctx, "demo", "a", targets.Stopped, ""); err != nil {
		t.Fatal(err)
	}
	re, err := c.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "a", Command: []string{"true"}})
	if err != nil || re.UID != 300001 || re.Generation != 2 {
		t.Fatalf("re-created demo/a = %+v, %v; want uid 300001 at generation 2", re, err)
	}
	if read, _ := c.GetSandbox(ctx, "demo", "a"); !reflect.DeepEqual(read, re) {
		t.Errorf("GetSandbox = %+v, CreateSandbox returned %+v", read, re)
	}

	// Given up, the id may go to another sandbox; many may hold none.
	if got, err := c.SetSandboxUID(ctx, "demo", "a", 0); err != nil || got.UID != 0 {
		t.Fatalf("SetSandboxUID(0) = %+v, %v", got, err)
	}
	if _, err := c.SetSandboxUID(ctx, "demo", "b", 300001); err != nil {
		t.Fatalf("the released id: %v", err)
	}

	if st.Reopen == nil {
		return
	}
	st = st.Reopen(t)
	for _, want := range []struct {
		tenant, id string
		uid        uint32
	}{{"demo", "a", 0}, {"demo", "b", 300001}, {"acme", "a", 300002}} {
		if got, err := st.Catalog.GetSandbox(ctx, want.tenant, want.id); err != nil || got.UID != want.uid {
			t.Errorf("after reopen %s/%s: uid %d, %v; want %d", want.tenant, want.id, got.UID, err, want.uid)
		}
	}
	_, err = st.Catalog.SetSandboxUID(ctx, "demo", "a", 300002)
	wantCode(t, err, problem.AlreadyExists)
}

// testSandboxLimits: a sandbox's resources and network (SPEC §9.2, §9.3)
// are stored as given, read back by every read, replaced with the rest of
// the definition when a stopped sandbox is re-created, and survive a
// reopen: a restarted gateway starts the workload with the limits it was
// created with, not the defaults of the day.
func testSandboxLimits(t *testing.T, st Stores) {
	ctx := t.Context()
	c := st.Catalog
	sb := targets.Sandbox{
		TenantID: "demo", ID: "lim", State: targets.Pending, Command: []string{"sh"},
		Resources: targets.Resources{Memory: 512 << 20, PIDs: 256, CPUs: 1.5},
		Network:   targets.NetworkEgress,
		// Neither is the caller's to store.
		Reason: targets.ReasonOOM,
		Usage:  &targets.Usage{MemoryBytes: 1, PIDs: 1, CPUSeconds: 1},
	}
	created, err := c.CreateSandbox(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	want := sb
	want.Generation, want.UpdatedAt, want.Reason, want.Usage = 1, created.UpdatedAt, "", nil
	if !reflect.DeepEqual(created, want) {
		t.Fatalf("CreateSandbox = %+v, want %+v", created, want)
	}
	if got, err := c.GetSandbox(ctx, "demo", "lim"); err != nil || !reflect.DeepEqual(got, created) {
		t.Fatalf("GetSandbox = %+v, %v; want %+v", got, err, created)
	}
	// Defaults (zero) are stored as zero, not as some value of the store's.
	plain, err := c.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "plain", Command: []string{"sh"}})
	if err != nil || plain.Resources != (targets.Resources{}) || plain.Network != "" {
		t.Fatalf("CreateSandbox(no limits) = %+v, %v", plain, err)
	}
	list, err := c.ListSandboxes(ctx, "demo")
	if err != nil || len(list) != 2 || !reflect.DeepEqual(list[0], created) || list[1].Resources != (targets.Resources{}) || list[1].Network != "" {
		t.Fatalf("ListSandboxes = %+v, %v", list, err)
	}
	// A state change keeps them.
	ready, err := c.SetSandboxState(ctx, "demo", "lim", targets.Ready, "")
	if err != nil || ready.Resources != sb.Resources || ready.Network != sb.Network {
		t.Fatalf("SetSandboxState(ready) = %+v, %v; want the limits kept", ready, err)
	}

	// Re-created over a stopped one: the new definition's limits replace
	// the old, down to none.
	if _, err := c.SetSandboxState(ctx, "demo", "lim", targets.Stopped, ""); err != nil {
		t.Fatal(err)
	}
	re, err := c.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "lim", Command: []string{"sh"},
		Resources: targets.Resources{PIDs: 64}, Network: targets.NetworkNone})
	if err != nil || re.Generation != 2 || re.Resources != (targets.Resources{PIDs: 64}) || re.Network != targets.NetworkNone {
		t.Fatalf("re-created = %+v, %v; want generation 2, pids 64 only, network none", re, err)
	}
	if got, _ := c.GetSandbox(ctx, "demo", "lim"); !reflect.DeepEqual(got, re) {
		t.Fatalf("GetSandbox = %+v, CreateSandbox returned %+v", got, re)
	}

	if st.Reopen == nil {
		return
	}
	st = st.Reopen(t)
	if got, err := st.Catalog.GetSandbox(ctx, "demo", "lim"); err != nil || !reflect.DeepEqual(got, re) {
		t.Errorf("after reopen: %+v, %v; want %+v", got, err, re)
	}
}

// testSandboxExit: SetSandboxExit records failed with its error and reason
// in one write, like SetSandboxState(failed) for the rest; any later state
// clears the reason, so a sandbox restarted after an OOM kill does not go
// on reading "oom"; re-creating a stopped sandbox starts with none.
func testSandboxExit(t *testing.T, st Stores) {
	ctx := t.Context()
	c := st.Catalog
	created, err := c.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "x", State: targets.Ready, Command: []string{"sh"},
		Resources: targets.Resources{Memory: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // UpdatedAt has ms precision
	got, err := c.SetSandboxExit(ctx, "demo", "x", "workload was killed for using more than 64Mi", targets.ReasonOOM)
	if err != nil || got.State != targets.Failed || got.Error != "workload was killed for using more than 64Mi" ||
		got.Reason != targets.ReasonOOM || got.Generation != created.Generation ||
		got.Resources != created.Resources || !got.UpdatedAt.After(created.UpdatedAt) {
		t.Fatalf("SetSandboxExit = %+v, %v; want failed, oom, the same generation and limits, a later UpdatedAt", got, err)
	}
	if read, err := c.GetSandbox(ctx, "demo", "x"); err != nil || !reflect.DeepEqual(read, got) {
		t.Fatalf("GetSandbox = %+v, %v; SetSandboxExit returned %+v", read, err, got)
	}
	if list, err := c.ListSandboxes(ctx, "demo"); err != nil || len(list) != 1 || list[0].Reason != targets.ReasonOOM {
		t.Fatalf("ListSandboxes = %+v, %v; want reason oom", list, err)
	}
	_, err = c.SetSandboxExit(ctx, "demo", "missing", "gone", targets.ReasonExited)
	wantCode(t, err, problem.NotFound)
	_, err = c.SetSandboxExit(ctx, "acme", "x", "gone", targets.ReasonExited) // another tenant's id
	wantCode(t, err, problem.NotFound)
	if read, _ := c.GetSandbox(ctx, "demo", "x"); read.Reason != targets.ReasonOOM {
		t.Fatalf("another tenant's SetSandboxExit changed reason to %q", read.Reason)
	}

	if st.Reopen != nil {
		st = st.Reopen(t)
		c = st.Catalog
		if read, err := c.GetSandbox(ctx, "demo", "x"); err != nil || read.Reason != targets.ReasonOOM || read.State != targets.Failed {
			t.Fatalf("after reopen: %+v, %v; want failed, oom", read, err)
		}
	}

	// Every state SetSandboxState records clears the reason, failed too:
	// a failure to start again is not the old exit.
	for _, state := range []targets.SandboxState{targets.Pending, targets.Ready, targets.Failed, targets.Stopped} {
		if _, err := c.SetSandboxExit(ctx, "demo", "x", "exit status 1", targets.ReasonExited); err != nil {
			t.Fatal(err)
		}
		got, err := c.SetSandboxState(ctx, "demo", "x", state, "exec: not found")
		if err != nil || got.State != state || got.Reason != "" {
			t.Fatalf("SetSandboxState(%s) after an exit = %+v, %v; want no reason", state, got, err)
		}
		if read, _ := c.GetSandbox(ctx, "demo", "x"); read.Reason != "" {
			t.Fatalf("GetSandbox after SetSandboxState(%s): reason %q", state, read.Reason)
		}
	}

	// A stopped sandbox that ended with a reason, re-created: none.
	if _, err := c.SetSandboxExit(ctx, "demo", "x", "killed", targets.ReasonSignaled); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetSandboxState(ctx, "demo", "x", targets.Stopped, ""); err != nil {
		t.Fatal(err)
	}
	re, err := c.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "x", Command: []string{"sh"}})
	if err != nil || re.Reason != "" || re.Error != "" {
		t.Fatalf("re-created = %+v, %v; want no reason, no error", re, err)
	}
	if read, _ := c.GetSandbox(ctx, "demo", "x"); read.Reason != "" {
		t.Fatalf("GetSandbox of the re-created sandbox: reason %q", read.Reason)
	}
}
