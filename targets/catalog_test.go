package targets

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
)

func newCatalogT(t *testing.T, store Store, dataDir string) *Catalog {
	t.Helper()
	c := NewCatalog(store, Options{DataDir: dataDir, StopGrace: time.Second})
	t.Cleanup(c.Close)
	return c
}

func wantCode(t *testing.T, err error, code problem.Code) *problem.Error {
	t.Helper()
	if problem.CodeOf(err) != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	return problem.From(err)
}

func TestSeedIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newMemStore()
	c := newCatalogT(t, store, t.TempDir())
	if err := c.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	sb, err := c.GetSandbox(ctx, "demo", "sbx-worker")
	if err != nil || sb.State != Ready || sb.Generation != 1 || !sb.TTY {
		t.Fatalf("sandbox %+v, %v", sb, err)
	}
	w, ok := c.Workload("demo", "sbx-worker")
	if !ok {
		t.Fatal("no workload")
	}
	svcs, err := c.ListServices(ctx, "demo")
	if err != nil || len(svcs) != 4 {
		t.Fatalf("services %+v, %v", svcs, err)
	}

	// Seeding again changes nothing: same generations, same process.
	if err := c.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if w2, _ := c.Workload("demo", "sbx-worker"); w2 != w {
		t.Fatal("re-seed restarted the sandbox")
	}
	for _, name := range []string{"worker", "browser", "pg", "billing"} {
		s, err := c.GetService(ctx, "demo", name)
		if err != nil || s.Generation != 1 {
			t.Fatalf("%s: %+v, %v", name, s, err)
		}
	}

	// A changed definition gets the next generation.
	cfg := DefaultConfig()
	cfg.Tenants[0].Services[3].URL = "https://billing2.internal"
	if err := c.Seed(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if s, _ := c.GetService(ctx, "demo", "billing"); s.Generation != 2 || s.URL != "https://billing2.internal" {
		t.Fatalf("billing = %+v", s)
	}
	if s, _ := c.GetService(ctx, "demo", "worker"); s.Generation != 1 {
		t.Fatalf("worker = %+v", s)
	}

	// An existing sandbox is left alone, even a stopped one.
	if _, err := c.DeleteSandbox(ctx, "demo", "sbx-worker"); err != nil {
		t.Fatal(err)
	}
	if err := c.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if sb, _ := c.GetSandbox(ctx, "demo", "sbx-worker"); sb.State != Stopped {
		t.Fatalf("re-seed touched a stopped sandbox: %+v", sb)
	}
}

func TestSeedRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	c := newCatalogT(t, newMemStore(), t.TempDir())
	err := c.Seed(context.Background(), &Config{Tenants: []TenantConfig{{ID: "a", Services: []ServiceConfig{{Name: "x", Kind: "vm"}}}}})
	if f := wantCode(t, err, problem.InvalidArgument).Details["field"]; f != "tenants[0].services[0].kind" {
		t.Fatalf("field = %v", f)
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newMemStore()
	c := newCatalogT(t, store, t.TempDir())
	if err := c.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	mustCreate := func(id string, argv ...string) Sandbox {
		sb, err := c.CreateSandbox(ctx, "demo", SandboxSpec{ID: id, Command: argv})
		if err != nil {
			t.Fatal(err)
		}
		return sb
	}
	mustCreate("sbx-failed", "/nonexistent")
	mustCreate("sbx-stopped", "sleep", "100")
	if _, err := c.DeleteSandbox(ctx, "demo", "sbx-stopped"); err != nil {
		t.Fatal(err)
	}
	// A pending sandbox, as between CreateSandbox's two store writes.
	if _, err := store.CreateSandbox(ctx, Sandbox{TenantID: "demo", ID: "sbx-pending", State: Pending, Command: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []Service{
		{TenantID: "demo", Name: "on-pending", Kind: KindSandbox, Sandbox: "sbx-pending"},
		{TenantID: "demo", Name: "on-missing", Kind: KindSandbox, Sandbox: "sbx-missing"},
		{TenantID: "demo", Name: "dyn", Kind: KindBuiltin, Dynamic: true},
	} {
		if _, err := c.PutService(ctx, svc); err != nil {
			t.Fatal(err)
		}
	}
	worker, _ := c.Workload("demo", "sbx-worker")
	svc := func(name string) Target { return Target{Service: &ServiceRef{Name: name}} }
	sbx := func(id string) Target { return Target{Sandbox: &SandboxRef{ID: id}} }

	ok := []struct {
		name    string
		target  Target
		kind    Kind
		offered string
		gen     int64
		dynamic bool
		backend string
		sandbox string
	}{
		{"sandbox service", svc("worker"), KindSandbox, "stdio,files", 1, false, "local:" + itoa(worker.PID()), "sbx-worker"},
		{"browser", svc("browser"), KindBrowser, "cdp,page", 1, false, "", ""},
		{"builtin", svc("pg"), KindBuiltin, "", 1, false, "", ""},
		{"dynamic", svc("dyn"), KindBuiltin, "", 1, true, "", ""},
		{"external", svc("billing"), KindExternal, "", 1, false, "https://billing.internal", ""},
		{"sandbox", sbx("sbx-worker"), KindSandbox, "stdio,files", 1, false, "local:" + itoa(worker.PID()), "sbx-worker"},
	}
	for _, tt := range ok {
		r, err := c.Resolve(ctx, "demo", tt.target)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var offered []string
		for _, ch := range r.Offered {
			offered = append(offered, string(ch))
		}
		if r.Kind != tt.kind || strings.Join(offered, ",") != tt.offered || r.Generation != tt.gen ||
			r.Dynamic != tt.dynamic || r.Backend != tt.backend || r.Offered == nil {
			t.Errorf("%s: %+v", tt.name, r)
		}
		if (r.Sandbox == nil) != (tt.sandbox == "") || (r.Sandbox != nil && r.Sandbox.ID != tt.sandbox) {
			t.Errorf("%s: sandbox %+v", tt.name, r.Sandbox)
		}
		if (r.Service == nil) != (tt.target.Service == nil) {
			t.Errorf("%s: service %+v", tt.name, r.Service)
		}
	}

	bad := []struct {
		name   string
		target Target
		code   problem.Code
		state  string
	}{
		{"unknown service", svc("nope"), problem.NotFound, ""},
		{"unknown sandbox", sbx("nope"), problem.NotFound, ""},
		{"service on missing sandbox", svc("on-missing"), problem.NotFound, ""},
		{"service on pending sandbox", svc("on-pending"), problem.SandboxNotReady, "pending"},
		{"pending", sbx("sbx-pending"), problem.SandboxNotReady, "pending"},
		{"failed", sbx("sbx-failed"), problem.SandboxNotReady, "failed"},
		{"stopped", sbx("sbx-stopped"), problem.SandboxNotReady, "stopped"},
		{"other tenant", svc("worker"), problem.NotFound, ""},
		{"no target", Target{}, problem.InvalidArgument, ""},
		{"two targets", Target{Service: &ServiceRef{Name: "worker"}, Sandbox: &SandboxRef{ID: "sbx-worker"}}, problem.InvalidArgument, ""},
	}
	for _, tt := range bad {
		tenant := "demo"
		if tt.name == "other tenant" {
			tenant = "acme"
		}
		_, err := c.Resolve(ctx, tenant, tt.target)
		if problem.CodeOf(err) != tt.code {
			t.Errorf("%s: err = %v, want %s", tt.name, err, tt.code)
			continue
		}
		pe := problem.From(err)
		if tt.state != "" && (pe.Details["state"] != tt.state || pe.Details["sandbox"] == nil) {
			t.Errorf("%s: details %v", tt.name, pe.Details)
		}
		if tt.code == problem.NotFound && !strings.Contains(pe.Detail, "not found") {
			t.Errorf("%s: detail %q", tt.name, pe.Detail)
		}
	}
}

func TestAdminValidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCatalogT(t, newMemStore(), t.TempDir())
	long := strings.Repeat("a", 64)
	svcs := []struct {
		name  string
		svc   Service
		field string
	}{
		{"empty tenant", Service{Name: "x", Kind: KindBuiltin}, "tenant"},
		{"empty name", Service{TenantID: "t", Kind: KindBuiltin}, "name"},
		{"name too long", Service{TenantID: "t", Name: long, Kind: KindBuiltin}, "name"},
		{"name with slash", Service{TenantID: "t", Name: "a/b", Kind: KindBuiltin}, "name"},
		{"name dot dot", Service{TenantID: "t", Name: "..", Kind: KindBuiltin}, "name"},
		{"leading dash", Service{TenantID: "t", Name: "-a", Kind: KindBuiltin}, "name"},
		{"unknown kind", Service{TenantID: "t", Name: "x", Kind: "vm"}, "kind"},
		{"sandbox kind, no sandbox", Service{TenantID: "t", Name: "x", Kind: KindSandbox}, "sandbox"},
		{"sandbox kind, bad sandbox", Service{TenantID: "t", Name: "x", Kind: KindSandbox, Sandbox: "a b"}, "sandbox"},
		{"sandbox kind with url", Service{TenantID: "t", Name: "x", Kind: KindSandbox, Sandbox: "s", URL: "http://x"}, "url"},
		{"external, no url", Service{TenantID: "t", Name: "x", Kind: KindExternal}, "url"},
		{"external, ftp url", Service{TenantID: "t", Name: "x", Kind: KindExternal, URL: "ftp://x"}, "url"},
		{"external, no host", Service{TenantID: "t", Name: "x", Kind: KindExternal, URL: "https:///p"}, "url"},
		{"external with sandbox", Service{TenantID: "t", Name: "x", Kind: KindExternal, URL: "https://x", Sandbox: "s"}, "sandbox"},
		{"browser with url", Service{TenantID: "t", Name: "x", Kind: KindBrowser, URL: "https://x"}, "url"},
		{"builtin with sandbox", Service{TenantID: "t", Name: "x", Kind: KindBuiltin, Sandbox: "s"}, "sandbox"},
	}
	for _, tt := range svcs {
		_, err := c.PutService(ctx, tt.svc)
		if problem.CodeOf(err) != problem.InvalidArgument || problem.From(err).Details["field"] != tt.field {
			t.Errorf("%s: err = %v, want invalid %s", tt.name, err, tt.field)
		}
	}
	for _, good := range []Service{
		{TenantID: "t", Name: strings.Repeat("a", 63), Kind: KindBuiltin},
		{TenantID: "t", Name: "A.b_c-1", Kind: KindBrowser},
		{TenantID: "t", Name: "s", Kind: KindSandbox, Sandbox: "not-yet-created"},
		{TenantID: "t", Name: "e", Kind: KindExternal, URL: "http://host:8080/path"},
	} {
		saved, err := c.PutService(ctx, good)
		if err != nil || saved.Generation != 1 || saved.UpdatedAt.IsZero() {
			t.Errorf("%+v: %+v, %v", good, saved, err)
		}
	}

	specs := []struct {
		name, tenant string
		spec         SandboxSpec
		field        string
	}{
		{"bad tenant", "", SandboxSpec{ID: "s", Command: []string{"true"}}, "tenant"},
		{"bad id", "t", SandboxSpec{ID: "s/../x", Command: []string{"true"}}, "id"},
		{"no command", "t", SandboxSpec{ID: "s"}, "command"},
		{"empty argv0", "t", SandboxSpec{ID: "s", Command: []string{""}}, "command"},
		{"nul in arg", "t", SandboxSpec{ID: "s", Command: []string{"echo", "a\x00b"}}, "command"},
		{"bad env", "t", SandboxSpec{ID: "s", Command: []string{"true"}, Env: []string{"=x"}}, "env"},
	}
	for _, tt := range specs {
		_, err := c.CreateSandbox(ctx, tt.tenant, tt.spec)
		if problem.CodeOf(err) != problem.InvalidArgument || problem.From(err).Details["field"] != tt.field {
			t.Errorf("%s: err = %v, want invalid %s", tt.name, err, tt.field)
		}
	}
	for _, f := range []func() error{
		func() error { _, err := c.GetService(ctx, "t", "a b"); return err },
		func() error { return c.DeleteService(ctx, "t", "") },
		func() error { _, err := c.ListServices(ctx, ""); return err },
		func() error { _, err := c.GetSandbox(ctx, "t", "../x"); return err },
		func() error { _, err := c.ListSandboxes(ctx, ""); return err },
		func() error { _, err := c.DeleteSandbox(ctx, "", "x"); return err },
	} {
		wantCode(t, f(), problem.InvalidArgument)
	}
}

func TestServiceCRUD(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCatalogT(t, newMemStore(), t.TempDir())
	if l, err := c.ListServices(ctx, "t"); err != nil || l == nil || len(l) != 0 {
		t.Fatalf("empty list = %#v, %v", l, err)
	}
	s := Service{TenantID: "t", Name: "x", Kind: KindBuiltin, Generation: 99}
	if saved, _ := c.PutService(ctx, s); saved.Generation != 1 {
		t.Fatalf("client generation not ignored: %+v", saved)
	}
	s.Dynamic = true
	if saved, _ := c.PutService(ctx, s); saved.Generation != 2 {
		t.Fatalf("changed: %+v", saved)
	}
	if saved, _ := c.PutService(ctx, s); saved.Generation != 2 {
		t.Fatalf("unchanged: %+v", saved)
	}
	if err := c.DeleteService(ctx, "t", "x"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.DeleteService(ctx, "t", "x"), problem.NotFound)
	_, err := c.GetService(ctx, "t", "x")
	wantCode(t, err, problem.NotFound)
}

func TestCreateAndDeleteSandbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	c := newCatalogT(t, newMemStore(), dir)

	sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "good", Command: []string{"sleep", "100"}})
	if err != nil || sb.State != Ready || sb.Generation != 1 || sb.Error != "" {
		t.Fatalf("%+v, %v", sb, err)
	}
	if want := dir + "/sandboxes/t1/good"; sb.Root != want {
		t.Fatalf("root %q, want %q", sb.Root, want)
	}
	if fi, err := os.Stat(sb.Root); err != nil || !fi.IsDir() || fi.Mode().Perm()&^0o750 != 0 {
		t.Fatalf("root: %v %v", fi.Mode(), err)
	}
	w, ok := c.Workload("t1", "good")
	if !ok || !alive(w.PID()) {
		t.Fatal("no running workload")
	}
	_, err = c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "good", Command: []string{"true"}})
	wantCode(t, err, problem.AlreadyExists)

	bad, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "bad", Command: []string{"/nonexistent"}})
	if err != nil || bad.State != Failed || !strings.Contains(bad.Error, "no such file") {
		t.Fatalf("%+v, %v", bad, err)
	}
	if _, ok := c.Workload("t1", "bad"); ok {
		t.Fatal("failed sandbox has a workload")
	}

	stopped, err := c.DeleteSandbox(ctx, "t1", "good")
	if err != nil || stopped.State != Stopped {
		t.Fatalf("%+v, %v", stopped, err)
	}
	if alive(w.PID()) {
		t.Fatal("workload alive after delete")
	}
	if _, ok := c.Workload("t1", "good"); ok {
		t.Fatal("deleted sandbox still has a workload")
	}
	again, err := c.DeleteSandbox(ctx, "t1", "good")
	if err != nil || again.State != Stopped || again.Generation != stopped.Generation {
		t.Fatalf("second delete: %+v, %v", again, err)
	}
	// The failed one's exit watcher must not overwrite stopped.
	if f, _ := c.DeleteSandbox(ctx, "t1", "bad"); f.State != Stopped {
		t.Fatalf("delete failed sandbox: %+v", f)
	}
	_, err = c.DeleteSandbox(ctx, "t1", "nope")
	wantCode(t, err, problem.NotFound)

	// A stopped sandbox can be created again, at the next generation.
	re, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "good", Command: []string{"sleep", "100"}})
	if err != nil || re.State != Ready || re.Generation != 2 {
		t.Fatalf("re-create: %+v, %v", re, err)
	}
	if l, _ := c.ListSandboxes(ctx, "t1"); len(l) != 2 {
		t.Fatalf("list = %+v", l)
	}
}

func TestWorkloadExitFailsSandbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCatalogT(t, newMemStore(), t.TempDir())
	sb, err := c.CreateSandbox(ctx, "t", SandboxSpec{ID: "x", Command: []string{"sh", "-c", "echo bye; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	w, ok := c.Workload("t", "x")
	if !ok && sb.State != Ready {
		t.Fatalf("%+v", sb)
	}
	waitDone(t, w, 5*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		sb, _ = c.GetSandbox(ctx, "t", "x")
		if sb.State == Failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %+v after its workload exited", sb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sb.Error != "workload exited with code 3" {
		t.Fatalf("reason %q", sb.Error)
	}
	// Still attachable for the ring and exit status.
	if w2, ok := c.Workload("t", "x"); !ok || w2 != w {
		t.Fatal("exited workload unregistered")
	}
	_, err = c.Resolve(ctx, "t", Target{Sandbox: &SandboxRef{ID: "x"}})
	wantCode(t, err, problem.SandboxNotReady)
}

func TestStartAfterRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, dir := newMemStore(), t.TempDir()

	c1 := NewCatalog(store, Options{DataDir: dir, StopGrace: time.Second})
	if err := c1.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.CreateSandbox(ctx, "demo", SandboxSpec{ID: "bad", Command: []string{"/nonexistent"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.CreateSandbox(ctx, "demo", SandboxSpec{ID: "gone", Command: []string{"sleep", "100"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.DeleteSandbox(ctx, "demo", "gone"); err != nil {
		t.Fatal(err)
	}
	w1, _ := c1.Workload("demo", "sbx-worker")
	c1.Close() // the gateway goes down: workloads stop, states stay
	c1.Close()
	if alive(w1.PID()) {
		t.Fatal("workload survived Close")
	}
	if sb, _ := store.GetSandbox(ctx, "demo", "sbx-worker"); sb.State != Ready {
		t.Fatalf("Close changed the state: %+v", sb)
	}
	_, err := c1.CreateSandbox(ctx, "demo", SandboxSpec{ID: "late", Command: []string{"true"}})
	wantCode(t, err, problem.Unavailable)

	// A sandbox left pending by a crash mid-create is started too.
	if _, err := store.CreateSandbox(ctx, Sandbox{TenantID: "demo", ID: "half", State: Pending, Command: []string{"sleep", "100"}}); err != nil {
		t.Fatal(err)
	}

	c2 := newCatalogT(t, store, dir)
	if err := c2.Seed(ctx, DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	_, err = c2.Resolve(ctx, "demo", Target{Service: &ServiceRef{Name: "worker"}})
	wantCode(t, err, problem.Unavailable) // ready in the store, no process yet
	if err := c2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c2.Start(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	w2, ok := c2.Workload("demo", "sbx-worker")
	if !ok || w2.PID() == w1.PID() || !alive(w2.PID()) {
		t.Fatal("workload not restarted")
	}
	r, err := c2.Resolve(ctx, "demo", Target{Service: &ServiceRef{Name: "worker"}})
	if err != nil || r.Backend != "local:"+itoa(w2.PID()) || r.Generation != 1 {
		t.Fatalf("%+v, %v", r, err)
	}
	if sb, _ := c2.GetSandbox(ctx, "demo", "half"); sb.State != Ready {
		t.Fatalf("pending sandbox: %+v", sb)
	}
	if r, err := c2.Resolve(ctx, "demo", Target{Sandbox: &SandboxRef{ID: "half"}}); err != nil || r.Sandbox.Root != dir+"/sandboxes/demo/half" {
		t.Fatalf("half: %+v, %v", r, err)
	}
	for id, st := range map[string]SandboxState{"bad": Failed, "gone": Stopped} {
		if sb, _ := c2.GetSandbox(ctx, "demo", id); sb.State != st {
			t.Errorf("%s: %+v", id, sb)
		}
		if _, ok := c2.Workload("demo", id); ok {
			t.Errorf("%s restarted", id)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
