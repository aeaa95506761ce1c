// Package diskstat measures the free space of a filesystem.
package diskstat

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Free returns the bytes of the filesystem holding path that an unprivileged
// process may still write (statfs f_bavail × f_bsize): what etcd, which
// does not run with reserved-block privileges in a container, can use for
// its copy of the database during a defragmentation.
func Free(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil //nolint:gosec,unconvert // sizes fit in int64; field types differ per platform
}
