/* cgroup/recvmsg4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_UDP4_RECVMSG): recvfrom() on a
 * UDP socket, connected or not.
 * Reads: the datagram's source (user_ip4/user_port), origin_store[socket], settings.
 * Writes: when the source is the DNS proxy (127.0.0.1:<DNS port>) and this socket's query was
 *         captured, the source, rewritten to the server the app asked (resolvers check it);
 *         counters. Must return 1 (recvmsg hooks cannot refuse). */
#include "restore.h"

int detour_recvmsg4(struct bpf_sock_addr *ctx)
{
    __u32 src[4];
    map_v4(src, ctx->user_ip4);
    struct origin *server = restored_origin(ctx, src);
    if (server && restore4(ctx, server))
        count(COUNT_DNS_REPLIES, 1);
    return 1;
}
