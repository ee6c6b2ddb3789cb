package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/nimbus/gateway/client"
)

// exitCodeError carries the attached workload's non-zero exit code: run
// exits with it.
type exitCodeError int

func (e exitCodeError) Error() string { return "workload exited with code " + strconv.Itoa(int(e)) }

// attach is `gateway attach SESSION | --service NAME | --sandbox ID`: it
// connects this terminal to a workload's stdio channel (SPEC §5.1) and
// exits with the workload's exit code. With a session id it mints a fresh
// connect URL for that open session; with --service or --sandbox it opens
// a session of its own and closes it ("detached") when it leaves.
func attach(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attach")
	fs.SetOutput(stderr)
	endpoint := fs.String("endpoint", "http://localhost:8080", "gateway base URL (env NIMBUS_ENDPOINT)")
	tenant := fs.String("tenant", "demo", "tenant id (env NIMBUS_TENANT)")
	token := fs.String("token", "", "tenant token (env NIMBUS_TOKEN)")
	service := fs.String("service", "", "open a session on this service")
	sandbox := fs.String("sandbox", "", "open a session on this sandbox")
	ttl := fs.Duration("ttl", 0, "requested TTL of the session attach opens (default: the server's)")
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of each API call and of the connect")
	if len(args) > 0 && !isFlag(args[0]) {
		// `attach SESSION --flags`: the flag package stops at the first
		// argument that is not a flag.
		args = append(args[1:len(args):len(args)], args[0])
	}
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if *token == "" {
		return usageError("a token is required: --token or NIMBUS_TOKEN")
	}
	c := client.New(*endpoint, *tenant, *token)
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), *timeout)
	}

	var url string
	switch {
	case fs.NArg() == 1 && *service == "" && *sandbox == "":
		ctx, cancel := call()
		s, err := c.Connect(ctx, fs.Arg(0))
		cancel()
		if err != nil {
			return err
		}
		if url = s.Status.Connect["stdio"]; url == "" {
			return fmt.Errorf("session %s has no stdio channel", fs.Arg(0))
		}
	case fs.NArg() == 0 && (*service == "") != (*sandbox == ""):
		req := client.OpenRequest{Channels: []string{"stdio"}, RequestedTTLMs: ttl.Milliseconds()}
		if *service != "" {
			req.Target = client.ServiceTarget(*service)
		} else {
			req.Target = client.SandboxTarget(*sandbox)
		}
		ctx, cancel := call()
		s, err := c.Open(ctx, req)
		cancel()
		if err != nil {
			return err
		}
		id := s.Metadata.ID
		defer func() {
			ctx, cancel := call()
			defer cancel()
			if _, err := c.Close(ctx, id, "detached"); err != nil {
				fmt.Fprintln(stderr, "gateway attach: closing session", id+":", err)
			}
		}()
		url = s.Status.Connect["stdio"]
	default:
		return usageError("usage: gateway attach SESSION | --service NAME | --sandbox ID [flags]")
	}

	ctx, cancel := call()
	conn, err := client.DialStdio(ctx, url)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close()
	return relay(conn, os.Stdin, stdout, stderr)
}

// relay copies in to the workload's stdin and its output to stdout and
// stderr until the connection ends. When in is a terminal and the
// workload runs on one, in is put in raw mode (every key, ^C included,
// goes to the workload) and the workload's terminal follows its size, on
// SIGWINCH. A workload on pipes keeps the local terminal cooked (so lines
// display as typed); ^C is then forwarded as SIGINT and ^D ends its stdin.
func relay(conn *client.Stdio, in *os.File, stdout, stderr io.Writer) error {
	fd := int(in.Fd())
	tty, _ := conn.Hello()
	isTerm := term.IsTerminal(fd)
	raw := isTerm && tty
	if raw {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return err
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		resize := func() {
			if cols, rows, err := term.GetSize(fd); err == nil {
				conn.Resize(cols, rows)
			}
		}
		resize()
		go func() {
			for range winch {
				resize()
			}
		}()
	} else if isTerm {
		intr := make(chan os.Signal, 1)
		signal.Notify(intr, os.Interrupt)
		defer signal.Stop(intr)
		go func() {
			for range intr {
				conn.Signal("SIGINT")
			}
		}()
	}

	// Stdin is copied by a goroutine that is not waited for: a read of a
	// terminal cannot be interrupted, and the process exits right after.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if _, werr := conn.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if !raw { // in raw mode ^D is a key the workload's terminal handles
					conn.CloseStdin()
				}
				return
			}
		}
	}()

	ctx := context.Background()
	for {
		stream, data, err := conn.Next(ctx)
		if errors.Is(err, io.EOF) {
			code, sig, _ := conn.Exit()
			if sig != "" {
				fmt.Fprintln(stderr, "\r\ngateway attach: workload killed by "+sig+"\r")
			}
			if code != 0 {
				return exitCodeError(code)
			}
			return nil
		}
		if err != nil {
			code, reason := conn.CloseStatus()
			if code > 0 {
				return fmt.Errorf("connection closed: %d %s", code, reason)
			}
			return err
		}
		w := stdout
		if stream == client.StreamStderr {
			w = stderr
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
}
