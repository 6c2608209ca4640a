/* cgroup/getpeername4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_INET4_GETPEERNAME).
 * Reads: the peer address the kernel is about to return (user_ip4/user_port), origin_store
 *        [socket], settings.
 * Writes: when the peer is the sidecar (127.0.0.1:<outbound or DNS port>) and this socket was
 *         redirected, the returned address, rewritten to the original destination: the app
 *         (curl -v, a client logging its peer) sees where it connected, as under iptables.
 * Must return 1. */
#include "restore.h"

int detour_getpeername4(struct bpf_sock_addr *ctx)
{
    __u32 peer[4];
    map_v4(peer, ctx->user_ip4);
    struct origin *orig = restored_origin(ctx, peer);
    if (orig)
        restore4(ctx, orig);
    return 1;
}
