package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nimbus/gateway/client"
)

// sessions is `gateway sessions open|get|list|close`, a client of a
// running gateway; it prints the API's JSON.
func sessions(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("usage: gateway sessions open|get|list|close [flags]")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("sessions " + sub)
	fs.SetOutput(stderr)
	endpoint := fs.String("endpoint", "http://localhost:8080", "gateway base URL (env NIMBUS_ENDPOINT)")
	tenant := fs.String("tenant", "demo", "tenant id (env NIMBUS_TENANT)")
	token := fs.String("token", "", "tenant token (env NIMBUS_TOKEN)")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	var (
		service, sandbox, state, reason, pageToken string
		channels                                   listFlag
		ttl                                        time.Duration
		pageSize                                   int
	)
	switch sub {
	case "open":
		fs.StringVar(&service, "service", "", "target service name")
		fs.StringVar(&sandbox, "sandbox", "", "target sandbox id")
		fs.Var(&channels, "channel", "channel to open (stdio, files, cdp, page); repeatable")
		fs.DurationVar(&ttl, "ttl", 0, "requested TTL (default: the server's)")
	case "list":
		fs.StringVar(&state, "state", "", "open, closed or expired")
		fs.IntVar(&pageSize, "page-size", 0, "items per page")
		fs.StringVar(&pageToken, "page-token", "", "page token from a previous listing")
	case "close":
		fs.StringVar(&reason, "reason", "done", "close reason")
	case "get":
	default:
		return usageError("unknown sessions command " + sub)
	}
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if *token == "" {
		return usageError("a token is required: --token or NIMBUS_TOKEN")
	}
	c := client.New(*endpoint, *tenant, *token)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	var out any
	var err error
	switch sub {
	case "open":
		req := client.OpenRequest{Channels: channels, RequestedTTLMs: ttl.Milliseconds()}
		switch {
		case service != "" && sandbox == "":
			req.Target = client.ServiceTarget(service)
		case sandbox != "" && service == "":
			req.Target = client.SandboxTarget(sandbox)
		default:
			return usageError("gateway sessions open: give exactly one of --service or --sandbox")
		}
		out, err = c.Open(ctx, req)
	case "get", "close":
		id, e := oneArg(fs, "session id")
		if e != nil {
			return e
		}
		if sub == "get" {
			out, err = c.Get(ctx, id)
		} else {
			out, err = c.Close(ctx, id, reason)
		}
	case "list":
		out, err = c.List(ctx, client.ListOptions{State: state, PageSize: pageSize, PageToken: pageToken})
	}
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func oneArg(fs *flag.FlagSet, what string) (string, error) {
	if fs.NArg() != 1 {
		return "", usageError(fmt.Sprintf("expected one argument: the %s", what))
	}
	return fs.Arg(0), nil
}
