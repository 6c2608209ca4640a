/* cgroup/sendmsg6 (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach CGROUP_UDP6_SENDMSG): as sendmsg4, for
 * AF_INET6 UDP sockets, v4-mapped servers included.
 * Reads: user_ip6/user_port, uid/gid, settings.
 * Writes: origin_store[socket], the destination ([::1] or [::ffff:127.0.0.1]:<DNS port>). */
#include "redirect.h"

int detour_sendmsg6(struct bpf_sock_addr *ctx)
{
    redirect_sock_addr6(ctx);
    return 1; /* 1 = let the (possibly rewritten) call proceed */
}
