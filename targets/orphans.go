package targets

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// gatewayEnv marks every workload process with the gateway process that
// started it, as "<pid>:<start time>"; descendants inherit it. Pdeathsig
// kills only a workload's direct child when the gateway dies (SIGKILL
// included), so a background job (`sleep 600 &`) would outlive it: the
// next gateway finds such orphans by this mark and kills them. The start
// time tells a dead gateway from a new process that reused its pid.
const gatewayEnv = "NIMBUS_GATEWAY"

// selfMark is this process's gatewayEnv value.
var selfMark = func() string {
	return strconv.Itoa(os.Getpid()) + ":" + startTime(os.Getpid())
}()

// startTime is field 22 of /proc/<pid>/stat (clock ticks since boot), or
// "" when the process does not exist.
func startTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces: fields are counted
	// after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 overall
}

// killOrphans SIGKILLs the processes under root (by working directory)
// whose gateway mark names a gateway that is no longer running, and
// returns how many. Workloads of live gateways — another replica sharing
// the data directory — are left alone.
func killOrphans(root string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	root = filepath.Clean(root) + string(filepath.Separator)
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd")
		if err != nil || !strings.HasPrefix(cwd+string(filepath.Separator), root) {
			continue
		}
		mark := processMark(pid)
		if mark == "" {
			continue
		}
		gpid, start, ok := strings.Cut(mark, ":")
		g, err := strconv.Atoi(gpid)
		if !ok || err != nil || (startTime(g) == start && start != "") {
			continue // its gateway still runs
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// processMark reads gatewayEnv from /proc/<pid>/environ.
func processMark(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return ""
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(gatewayEnv+"=")); ok {
			return string(v)
		}
	}
	return ""
}
