package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return fs
}

// parseWithEnv parses args, then fills every flag not set on the command
// line from NIMBUS_<FLAG> (dashes become underscores), so the binary is as
// configurable from a container's env as from its command line.
//
// Flags may follow positional arguments (`sessions close ID --reason x`):
// the standard flag package stops at the first positional, so parsing
// resumes after each one, and fs.Args() holds the positionals at the end.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	_, err := parseWithEnvArgs(fs, args)
	return err
}

// parseWithEnvArgs is parseWithEnv that also reports which flags were
// given on the command line rather than taken from the environment: a
// secret in argv is readable by every process on the host
// (/proc/<pid>/cmdline), one in the environment only by the same user.
func parseWithEnvArgs(fs *flag.FlagSet, args []string) (fromArgs map[string]bool, err error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		rest := fs.Args()
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...) // after "--", all are positional
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	if err := fs.Parse(append([]string{"--"}, positional...)); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "NIMBUS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
		}
	})
	return set, err
}

// listFlag is a repeatable string flag; from env it splits on commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// byteSize is a flag of a number of bytes: a plain integer, or one with a
// binary unit (KiB, MiB, GiB, TiB; also K, M, G, T for the same).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(v string) error {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for i, unit := range []string{"K", "M", "G", "T"} {
		for _, suffix := range []string{unit + "iB", unit} {
			if rest, ok := strings.CutSuffix(s, suffix); ok {
				s, mult = strings.TrimSpace(rest), int64(1)<<(10*(i+1))
				break
			}
		}
		if mult != 1 {
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("%q is not a size in bytes (e.g. 67108864 or 64MiB)", v)
	}
	*b = byteSize(n * mult)
	return nil
}
