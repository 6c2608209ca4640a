/* cgroup/connect6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_INET6_CONNECT).
 * Reads: the destination passed to connect() on an AF_INET6 socket (user_ip6/user_port),
 *        including v4-mapped ::ffff:a.b.c.d from dual-stack sockets (the kernel runs only this
 *        hook for them, not connect4), the socket type, uid/gid, settings, exclusion maps.
 * Writes: origin_store[socket] = the original destination (16-byte form); the destination,
 *         rewritten to [::1]:<port>, or [::ffff:127.0.0.1]:<port> for a v4-mapped one; counters.
 * Leaves alone: the same as connect4, plus everything when IPv6 capture is off (settings). */
#include "redirect.h"

int detour_connect6(struct bpf_sock_addr *ctx)
{
    __u32 dst[4];
    read_ip6(ctx, dst);
    struct settings *s = current_settings();
    if (!s || (!(s->flags & SETTING_IPV6) && !is_v4_mapped(dst)))
        return 1;
    __u16 port = redirect_port(ctx, dst);
    if (port)
        rewrite6(ctx, dst, port);
    return 1;
}
