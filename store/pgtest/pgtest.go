// Package pgtest starts a real PostgreSQL server for tests: one per test
// binary, from the Debian packages' binaries, with a fresh database for
// every caller of Start.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Start returns the URL of a new, empty database on the test binary's
// PostgreSQL server, starting the server on first use. The database is
// dropped when t ends.
//
// Without PostgreSQL binaries (under /usr/lib/postgresql/*/bin, or initdb on
// PATH) the test is skipped, except when the environment has CI=true: CI
// must never silently skip the multi-replica tests, so there it fails.
//
// The server runs as the postgres OS user when the test runs as root
// (PostgreSQL refuses root), with fsync off: it is for tests only. It stops
// when Stop is called, or at the latest when the test binary exits, however
// it exits (see start).
func Start(t testing.TB) (url string) {
	t.Helper()
	once.Do(func() { srv, srvErr = start() })
	if srvErr != nil {
		var missing errMissing
		if errors.As(srvErr, &missing) && os.Getenv("CI") != "true" {
			t.Skipf("pgtest: PostgreSQL is not installed (%v); install it (apt-get install postgresql) to run this test", srvErr)
		}
		t.Fatalf("pgtest: %v", srvErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := "t_" + randomHex(8)
	if err := srv.admin(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE: a store a test forgot to close must not keep it.
		_ = srv.admin(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
	})
	return srv.url(name)
}

// Stop stops the server and removes its files. TestMain may call it after
// m.Run; without it the server stops when the test binary exits. Start
// must not be called after Stop.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if srv == nil || srv.stopped {
		return
	}
	srv.stopped = true
	_ = srv.keepalive.Close() // the wrapper sees EOF and shuts the server down
	_ = srv.cmd.Wait()
}

var (
	once   sync.Once
	mu     sync.Mutex // guards Stop
	srv    *server
	srvErr error
)

// server is the running PostgreSQL.
type server struct {
	port      int
	cmd       *exec.Cmd // the wrapper shell (see start)
	keepalive *os.File  // write end of the wrapper's stdin
	stopped   bool      // guarded by mu
}

func (s *server) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// admin runs one statement on the postgres database.
func (s *server) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.url("postgres"))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	_, err = conn.Exec(ctx, sql)
	return err
}

// errMissing says PostgreSQL is not installed.
type errMissing struct{ error }

// start initializes a cluster in a new temporary directory and starts the
// server under a wrapper shell that reads its stdin: the test binary holds
// the write end, so when the binary exits (even killed) the read returns,
// and the wrapper shuts the server down and removes the directory. No
// goroutine is left behind, so goleak-checked packages can use pgtest.
func start() (*server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, errMissing{err}
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "nimbus-pgtest-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	log := filepath.Join(dir, "postgres.log")
	script := `"$1" -D "$2" -p "$3" -k "$4" -c listen_addresses=127.0.0.1 \
	-c fsync=off -c synchronous_commit=off -c full_page_writes=off \
	-c max_connections=300 -c shared_buffers=64MB </dev/null >"$5" 2>&1 &
pid=$!
read -r _
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$4"`
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("/bin/sh", "-c", script, "sh",
		filepath.Join(bin, "postgres"), data, strconv.Itoa(port), dir, log)
	cmd.Stdin = r // an *os.File: exec starts no copying goroutine
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, err
	}
	_ = r.Close()
	s := &server{port: port, cmd: cmd, keepalive: w}
	if err := s.waitReady(60 * time.Second); err != nil {
		_ = w.Close()
		_ = cmd.Wait()
		logText, _ := os.ReadFile(log)
		return nil, fmt.Errorf("postgres did not start: %v\n%s", err, logText)
	}
	ok = true
	return s, nil
}

// waitReady polls until the server accepts connections.
func (s *server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.url("postgres"))
		cancel()
		if err == nil {
			return conn.Close(context.Background())
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// binDir finds the PostgreSQL server binaries: the newest
// /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else initdb on
// PATH.
func binDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no initdb under /usr/lib/postgresql/*/bin or on PATH")
}

// version is N of /usr/lib/postgresql/N/bin/initdb.
func version(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

// credential is the postgres user when running as root (the server refuses
// to run as root), nil otherwise.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root and there is no postgres user to run the server as: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// freePort returns a loopback TCP port nothing listens on right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
