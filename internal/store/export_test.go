package store

import "context"

// WatchFromEtcdRevision exposes watchFrom to tests: a watch starting at an
// etcd revision (which may have been compacted).
func WatchFromEtcdRevision(ctx context.Context, e *Etcd, prefix string, rev int64) (<-chan Event, error) {
	return e.watchFrom(ctx, prefix, rev)
}
