/* cgroup/recvmsg6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_UDP6_RECVMSG): as recvmsg4,
 * for AF_INET6 UDP sockets (the DNS proxy answers from [::1] or [::ffff:127.0.0.1]).
 * Reads: user_ip6/user_port, origin_store[socket], settings.
 * Writes: the source, rewritten to the server the app asked (16-byte form as stored); counters. */
#include "restore.h"

int detour_recvmsg6(struct bpf_sock_addr *ctx)
{
    __u32 src[4];
    read_ip6(ctx, src);
    struct origin *server = restored_origin(ctx, src);
    if (server && restore6(ctx, server))
        count(COUNT_DNS_REPLIES, 1);
    return 1;
}
