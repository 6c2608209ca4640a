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
    redirect_sock_addr6(ctx);
    return 1; /* 1 = let the (possibly rewritten) call proceed */
}
