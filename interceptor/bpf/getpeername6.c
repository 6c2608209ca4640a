/* cgroup/getpeername6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_INET6_GETPEERNAME): as
 * getpeername4, for AF_INET6 sockets ([::1] or [::ffff:127.0.0.1] peers).
 * Reads: user_ip6/user_port, origin_store[socket], settings.
 * Writes: the returned address, rewritten to the original destination (16-byte form). */
#include "restore.h"

int detour_getpeername6(struct bpf_sock_addr *ctx)
{
    __u32 peer[4];
    read_ip6(ctx, peer);
    struct origin *orig = restored_origin(ctx, peer);
    if (orig)
        restore6(ctx, orig);
    return 1;
}
