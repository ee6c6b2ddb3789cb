// Command gateway is the Nimbus gateway: `gateway` (or `gateway serve`)
// runs the server; `gateway token mint` signs development tokens; `gateway
// sessions …` is a client of a running gateway.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `usage:
  gateway [serve] [flags]              run the gateway (default)
  gateway token mint [flags]           print a tenant token signed with the development key
  gateway sessions open|get|list|close client commands against a running gateway
  gateway attach SESSION | --service NAME | --sandbox ID
                                       attach this terminal to a workload's stdio
  gateway cp LOCAL SESSION:PATH | SESSION:PATH LOCAL
                                       copy a file into or out of a session's sandbox

Run "gateway COMMAND -h" for the flags of a command. Every serve flag can
also be set as NIMBUS_<FLAG> (e.g. NIMBUS_DATA_DIR).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd, rest := "serve", args
	if len(args) > 0 && !isFlag(args[0]) {
		cmd, rest = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(rest, stdout, stderr)
	case "token":
		if len(rest) == 0 || rest[0] != "mint" {
			err = usageError("usage: gateway token mint [flags]")
			break
		}
		err = tokenMint(rest[1:], stdout, stderr)
	case "sessions":
		err = sessions(rest, stdout, stderr)
	case "attach":
		err = attach(rest, stdout, stderr)
	case "cp":
		err = cp(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageError("unknown command " + cmd + "\n" + usage)
	}
	var ue usageError
	var ec exitCodeError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ec):
		// attach exits with the workload's own exit code.
		return int(ec)
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, string(ue))
		return 2
	default:
		fmt.Fprintln(stderr, "gateway:", err)
		return 1
	}
}

// usageError is a command-line mistake: exit code 2.
type usageError string

func (e usageError) Error() string { return string(e) }

func isFlag(s string) bool { return len(s) > 0 && s[0] == '-' }
