/* cgroup/connect4 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_INET4_CONNECT).
 * Reads: the socket type, the destination the app passed to connect() (user_ip4/user_port),
 *        the calling task's uid, the socket cookie.
 * Writes: origin_by_cookie[cookie] = original destination; the destination itself, rewritten
 *         to 127.0.0.1:PROXY_PORT.
 * Leaves alone: non-TCP sockets, the proxy's own sockets (uid PROXY_UID: loop prevention) and
 * destinations in 127.0.0.0/8. */
#include "maps.h"

int detour_connect4(struct bpf_sock_addr *ctx)
{
    if (ctx->type != SOCK_STREAM)
        return 1;
    if ((__u32)bpf_get_current_uid_gid() == PROXY_UID)
        return 1;
    __u32 dst = ctx->user_ip4;
    if ((dt_ntohl(dst) >> 24) == 127)
        return 1;

    struct origin orig = {};
    orig.ip4 = dst;
    orig.port = (__u16)ctx->user_port;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    origin_by_cookie.update(&cookie, &orig);

    ctx->user_ip4 = dt_htonl(LOOPBACK_HOST_ORDER);
    ctx->user_port = dt_htons(PROXY_PORT);
    return 1; /* 1 = allow the (rewritten) connect */
}
