package targets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// newNetns makes a network namespace that lives as long as the file at
// path (a bind mount of the nsfs file, like `ip netns add`), with its
// loopback up; runc and the CNI plugins enter it by that path.
func newNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_ = f.Close()
	errc := make(chan error, 1)
	go func() {
		// unshare(CLONE_NEWNET) moves only this thread, locked to this
		// goroutine until it is back in the host's namespace; if it
		// cannot get back it stays locked, and the runtime ends it with
		// the goroutine. Always ending the thread instead (as CNI's test
		// helpers do) fails on the main thread: the runtime cannot end
		// it and parks it for good, still in the namespace, which keeps
		// the namespace alive and makes /proc/self/net show it (seen:
		// the MTU read from /proc/net/route came out wrong).
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind mount: %w", err)
		} else {
			err = loopbackUp()
		}
		if serr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("back to the host's namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return errors.Join(err, removeNetns(path))
	}
	return nil
}

// removeNetns unmounts and removes what newNetns made (the namespace ends
// with its last process); whatever is already gone is no error.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// isNetns tells whether path is a (mounted) network namespace file.
func isNetns(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// ensureSharedDir makes dir a mount point of its own with shared
// propagation, as `ip netns` does with /run/netns: a mount namespace
// copied from ours while a netns file is mounted (a service with
// PrivateTmp, say) then sees our unmount too, instead of keeping the
// namespace, and its veth, alive in a private copy.
func ensureSharedDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, "")
	if err != unix.EINVAL { // EINVAL: not a mount point yet
		return err
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	return unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, "")
}

// unmountDir undoes ensureSharedDir.
func unmountDir(dir string) error {
	for range 10 { // a bound: each round undoes one mount stacked on dir
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if err == unix.EINVAL || err == unix.ENOENT {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("still a mount point")
}

// loopbackUp sets lo up in the calling thread's network namespace (a new
// one has it down, and runc does not touch a namespace it is given).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

// setPortIsolated sets the bridge port flag "isolated" (Linux ≥ 4.18) on
// the bridge port ifindex: `bridge link set dev … isolated on`.
func setPortIsolated(ifindex int) error {
	msg := ifinfomsg(unix.AF_BRIDGE, ifindex)
	msg = append(msg, rtattr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, rtattr(unix.IFLA_BRPORT_ISOLATED, []byte{1}))...)
	return netlinkRequest(unix.RTM_SETLINK, msg)
}

// deleteLinkByName deletes a network interface; one that does not exist
// is no error.
func deleteLinkByName(name string) error {
	msg := ifinfomsg(unix.AF_UNSPEC, 0)
	msg = append(msg, rtattr(unix.IFLA_IFNAME, append([]byte(name), 0))...)
	if err := netlinkRequest(unix.RTM_DELLINK, msg); err != nil && err != unix.ENODEV {
		return err
	}
	return nil
}

// ifinfomsg is a struct ifinfomsg for family and ifindex.
func ifinfomsg(family uint8, ifindex int) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = family
	binary.NativeEndian.PutUint32(b[4:], uint32(ifindex))
	return b
}

// rtattr is one netlink attribute, padded to 4 bytes.
func rtattr(typ uint16, data []byte) []byte {
	n := unix.SizeofRtAttr + len(data)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

// netlinkRequest sends one rtnetlink request in the caller's network
// namespace and returns the kernel's answer to it.
func netlinkRequest(typ uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	const seq = 1
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("netlink: short answer")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
