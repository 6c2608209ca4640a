/* cgroup/recvmsg4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_UDP4_RECVMSG): recvfrom() on a
 * UDP socket, connected or not.
 * Reads: the datagram's source (user_ip4/user_port), origin_store[socket], settings.
 * Writes: when the source is the DNS proxy (127.0.0.1:<DNS port>) and this socket's query was
 *         captured, the source, rewritten to the server the app asked (resolvers check it).
 * Must return 1 (recvmsg hooks cannot refuse). */
#include "dns.h"

int detour_recvmsg4(struct bpf_sock_addr *ctx)
{
    __u32 src[4];
    map_v4(src, ctx->user_ip4);
    struct origin *server = captured_server(ctx, src);
    if (server && is_v4_mapped(server->ip)) {
        ctx->user_ip4 = server->ip[3];
        ctx->user_port = server->port;
    }
    return 1;
}
